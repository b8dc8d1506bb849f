"""Prometheus metrics of `bankflow run`: what a person (or an alert rule) watches while the pipeline runs for months.

Every metric is named `bankflow_*` and labelled by `pipeline`; `env` is on `bankflow_info` only (join on it).
Each `RunMetrics` has its own `CollectorRegistry`, so tests and several pipelines in one process never collide.

    counters   bankflow_stage_runs_total{stage}, bankflow_stage_errors_total{stage},
               bankflow_rows_total{stage,table} (rows a stage wrote per table: load → raw tables),
               bankflow_events_total{table}, bankflow_lake_files_total{table}, bankflow_lake_bytes_total{table}
               (the cdc stream's output in the lake)
    histogram  bankflow_stage_duration_seconds{stage}
    gauges     bankflow_stage_last_success_timestamp_seconds{stage} (unix time; load and transform above all),
               bankflow_raw_freshness_seconds{table} (now - newest source commit time in that raw table),
               bankflow_marts_freshness_seconds and bankflow_mart_freshness_seconds{model} (now - raw's newest
               commit when the last successful transform started), bankflow_lag_seconds (now - newest commit in
               the lake, 0 while the slot has nothing unread), bankflow_lag_bytes{slot},
               bankflow_slot_retained_wal_bytes{slot}, bankflow_slot_active{slot}, bankflow_slot_wal_status{slot,
               wal_status} (1 for the current one), bankflow_dead_letters_pending{table},
               bankflow_monitor_max_*{...} (the spec's thresholds, for alert rules)

The time-based gauges are computed at scrape time, so they grow while nothing happens (a stuck pipeline shows).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from bankflow.errors import BankflowError

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Monitor

WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")  # pg_replication_slots.wal_status (PG >= 13)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# Monitor field -> (metric name, help)
THRESHOLDS = {
    "max_lag_seconds": ("bankflow_monitor_max_lag_seconds", "monitor.max_lag_seconds of the spec"),
    "max_raw_age_seconds": ("bankflow_monitor_max_raw_age_seconds", "monitor.max_raw_age_seconds of the spec"),
    "max_mart_age_seconds": ("bankflow_monitor_max_mart_age_seconds", "monitor.max_mart_age_seconds of the spec"),
    "max_dead_letters": ("bankflow_monitor_max_dead_letters", "monitor.max_dead_letters of the spec"),
}


def _unix(ts: dt.datetime | None) -> float | None:
    """A datetime as unix seconds; a naive one is taken as UTC (bankflow's timestamps are UTC)."""
    if ts is None:
        return None
    return (ts if ts.tzinfo else ts.replace(tzinfo=dt.timezone.utc)).timestamp()


class _Slot:
    __slots__ = ("active", "lag_bytes", "name", "retained_bytes", "wal_status")

    def __init__(self, name: str, retained_bytes: int | None, lag_bytes: int | None, wal_status: str | None,
                 active: bool | None) -> None:
        self.name, self.retained_bytes, self.lag_bytes = name, retained_bytes, lag_bytes
        self.wal_status, self.active = wal_status, active


class _LiveGauges:
    """The gauges that depend on the time of the scrape (freshness, lag) or are replaced as a whole (slot, dead
    letters, thresholds): a custom collector reading the last values under one lock."""

    def __init__(self, pipeline: str, clock: Any = time.time) -> None:
        self.pipeline = pipeline
        self.clock = clock
        self.lock = threading.Lock()
        self.raw_newest: dict[str, float] = {}
        self.lake_newest: float | None = None
        self.marts_as_of: float | None = None
        self.models: list[str] = []
        self.slot: _Slot | None = None
        self.dead_letters: dict[str, int] = {}
        self.thresholds: dict[str, float] = {}

    def _family(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, documentation, labels=("pipeline", *labels))

    def describe(self) -> list[Metric]:
        return []  # names are not known before the first values; nothing to check for collisions

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        p = self.pipeline
        with self.lock:
            raw = self._family("bankflow_raw_freshness_seconds",
                               "Seconds since the newest source commit that raw holds, per raw table", ("table",))
            for table, ts in sorted(self.raw_newest.items()):
                raw.add_metric([p, table], max(now - ts, 0.0))
            yield raw
            if self.marts_as_of is not None:
                age = max(now - self.marts_as_of, 0.0)
                yield self._value("bankflow_marts_freshness_seconds",
                                  "Seconds since the newest source commit the marts were built from", age)
                per_model = self._family("bankflow_mart_freshness_seconds",
                                         "Seconds since the newest source commit each mart was built from",
                                         ("model",))
                for model in self.models:
                    per_model.add_metric([p, model], age)
                yield per_model
            slot = self.slot
            if self.lake_newest is not None or slot is not None:
                behind = slot is not None and bool(slot.lag_bytes)
                lag = max(now - self.lake_newest, 0.0) if behind and self.lake_newest is not None else 0.0
                yield self._value("bankflow_lag_seconds", "Seconds between now and the newest source commit in the "
                                  "lake while the slot has changes the lake has not (0 when it has none)", lag)
            if slot is not None:
                for name, documentation, value in (
                        ("bankflow_lag_bytes", "WAL bytes past the slot's confirmed position (not yet in the lake)",
                         slot.lag_bytes),
                        ("bankflow_slot_retained_wal_bytes", "WAL bytes the slot keeps on the source's disk "
                         "(current position - restart_lsn)", slot.retained_bytes),
                        ("bankflow_slot_active", "1 when a consumer is connected to the slot",
                         None if slot.active is None else int(slot.active))):
                    family = self._family(name, documentation, ("slot",))
                    if value is not None:
                        family.add_metric([p, slot.name], float(value))
                    yield family
                status = self._family("bankflow_slot_wal_status", "The slot's wal_status (1 for the current "
                                      "one; lost = invalidated by max_slot_wal_keep_size)", ("slot", "wal_status"))
                for state in WAL_STATUSES:
                    status.add_metric([p, slot.name, state], float(slot.wal_status == state))
                yield status
            letters = self._family("bankflow_dead_letters_pending", "Dead-lettered events not yet replayed, per "
                                   "table", ("table",))
            for table, count in sorted(self.dead_letters.items()):
                letters.add_metric([p, table], float(count))
            yield letters
            for field, (name, documentation) in THRESHOLDS.items():
                if field in self.thresholds:
                    yield self._value(name, documentation, self.thresholds[field])

    def _value(self, name: str, documentation: str, value: float) -> GaugeMetricFamily:
        family = self._family(name, documentation)
        family.add_metric([self.pipeline], value)
        return family


class RunMetrics:
    """The metrics one `bankflow run` process exports; the run loop calls these as things happen."""

    def __init__(self, pipeline: str, env: str | None, registry: CollectorRegistry | None = None) -> None:
        self.pipeline = pipeline
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        r = self.registry
        info = Info("bankflow", "The pipeline this process runs", ["pipeline"], registry=r)
        info.labels(pipeline).info({"env": env or ""})
        self._runs = Counter("bankflow_stage_runs_total", "Stage runs (load cycles, transforms, ...)",
                             ["pipeline", "stage"], registry=r)
        self._errors = Counter("bankflow_stage_errors_total", "Stage runs that failed", ["pipeline", "stage"],
                               registry=r)
        self._duration = Histogram("bankflow_stage_duration_seconds", "How long a stage run took",
                                   ["pipeline", "stage"], buckets=DURATION_BUCKETS, registry=r)
        self._last_success = Gauge("bankflow_stage_last_success_timestamp_seconds",
                                   "Unix time the stage last finished successfully", ["pipeline", "stage"],
                                   registry=r)
        self._rows = Counter("bankflow_rows_total", "Rows a stage wrote, per table (load: raw tables)",
                             ["pipeline", "stage", "table"], registry=r)
        self._events = Counter("bankflow_events_total", "Change events the cdc stream wrote into the lake",
                               ["pipeline", "table"], registry=r)
        self._files = Counter("bankflow_lake_files_total", "Parquet files the cdc stream wrote", ["pipeline", "table"],
                              registry=r)
        self._bytes = Counter("bankflow_lake_bytes_total", "Bytes of Parquet the cdc stream wrote",
                              ["pipeline", "table"], registry=r)
        self._live = _LiveGauges(pipeline)
        r.register(self._live)  # any object with collect() is a collector

    # ---- the endpoint

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port in a daemon thread (0 picks a free port); return the port it listens on."""
        from prometheus_client import start_http_server

        if self._server is not None:
            return int(self._server.server_port)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise BankflowError(f"the metrics endpoint cannot listen on {host}:{port}: {exc.strerror or exc} "
                                f"(set run.metrics.port to a free port, 0 to pick one, or null to turn it off)"
                                ) from None
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop the endpoint (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    # ---- what happened

    def stage_finished(self, stage: str, ok: bool, seconds: float,
                       rows_by_table: dict[str, int] | None = None, error: str | None = None) -> None:
        """One run of a stage. The error text is not exported (unbounded label values); it is counted."""
        p = self.pipeline
        self._runs.labels(p, stage).inc()
        self._duration.labels(p, stage).observe(max(seconds, 0.0))
        if ok:
            self._last_success.labels(p, stage).set(time.time())
        else:
            self._errors.labels(p, stage).inc()
        for table, rows in (rows_by_table or {}).items():
            self._rows.labels(p, stage, table).inc(max(rows, 0))

    def lake_written(self, table: str, files: int, rows: int, size_bytes: int) -> None:
        p = self.pipeline
        self._events.labels(p, table).inc(max(rows, 0))
        self._files.labels(p, table).inc(max(files, 0))
        self._bytes.labels(p, table).inc(max(size_bytes, 0))

    def raw_newest_commit(self, table: str, ts: dt.datetime | None) -> None:
        with self._live.lock:
            value = _unix(ts)
            if value is None:
                self._live.raw_newest.pop(table, None)
            else:
                self._live.raw_newest[table] = value

    def lake_newest_commit(self, ts: dt.datetime | None) -> None:
        with self._live.lock:
            self._live.lake_newest = _unix(ts)

    def marts_as_of(self, ts: dt.datetime | None, models: list[str]) -> None:
        with self._live.lock:
            self._live.marts_as_of = _unix(ts)
            self._live.models = list(models)

    def slot(self, name: str, retained_bytes: int | None, lag_bytes: int | None, wal_status: str | None,
             active: bool | None) -> None:
        with self._live.lock:
            self._live.slot = _Slot(name, retained_bytes, lag_bytes, wal_status, active)

    def dead_letters(self, pending_by_table: dict[str, int]) -> None:
        """The whole pending set: a table no longer listed has none left."""
        with self._live.lock:
            self._live.dead_letters = dict(pending_by_table)

    def thresholds(self, monitor: Monitor) -> None:
        with self._live.lock:
            self._live.thresholds = {field: float(getattr(monitor, field)) for field in THRESHOLDS
                                     if getattr(monitor, field, None) is not None}

    def text(self) -> str:
        """The exposition text, as a scrape would get it."""
        return generate_latest(self.registry).decode("utf-8")


# ---------------------------------------------------------------- the slot, for `run` and `status`

def probe_slot(resolved: ResolvedSpec) -> dict[str, Any] | None:
    """The slot as `bankflow status` reads it (bankflow.status.read_slot), over a short connection to the
    source; never starts an embedded server. None when the slot does not exist."""
    import psycopg2

    from bankflow.source import source_server
    from bankflow.status import read_slot

    server = source_server(resolved)
    conn = psycopg2.connect(**{"connect_timeout": 5, **server.connect_kwargs(start=False)})  # a probe, not a wait
    try:
        with conn.cursor() as cur:
            return read_slot(cur, resolved.spec.cdc.slot)
    finally:
        conn.close()
