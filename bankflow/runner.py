"""`bankflow run`: one long-running process that keeps the whole pipeline current.

    source stage once → cdc in follow mode (its own thread: streams into the lake, acknowledges positions only
    once files are durable, exactly as `apply --follow`) → on the main thread, a loop that loads new lake files
    into raw on the flush cycle (`run.load`) → transforms on the cadence (`run.transform`), each in a thread
    of its own while the loads go on

There is never more than one transform at once, and neither loads nor transforms wait for the stream, nor the
stream for them. On DuckDB the loads and dbt share the one database this process opens (DuckDB's transactions
keep them apart: the loads write raw and the ledger, dbt reads raw from a position it fixes at each model's
start). Every load goes through the warehouse's ledger (each file once, rows and ledger rows in one transaction
on DuckDB), so a `kill -9` at any moment loses nothing and duplicates nothing: the next run finds the files the
ledger lacks, and the cdc engine replays what the lake lacks.

SIGINT/SIGTERM stop cleanly: the stream flushes its batches and acknowledges them, a running transform
finishes, then everything pending is loaded, and the process exits. A second signal gives up at once
(nothing is lost: see above).

The loop writes `<state_dir>/run_state.json` after every cycle (`bankflow status` reads it) and, unless
`run.metrics.port` is null, serves Prometheus metrics (`bankflow.metrics`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bankflow.errors import BankflowError
from bankflow.stages.base import Progress, RunContext, StageResult, save_traceback
from bankflow.stopping import stop_on_signals

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import RunTransform, Table

log = logging.getLogger(__name__)

RUN_STATE = "run_state.json"
PROBE_EVERY = 10.0  # seconds between slot / dead-letter probes for the metrics
STATE_EVERY = 1.0  # seconds between writes of run_state.json when nothing happened
LATENCY_SAMPLES = 10_000


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# ---------------------------------------------------------------- what is in the lake and not in raw yet

@dataclass(frozen=True)
class LakeFileInfo:
    table: str
    key: str  # relative to the lake root, as the ledger has it
    rows: int
    size: int
    newest_commit: dt.datetime | None  # max(_source_ts) from the file's statistics
    seen_at: float = 0.0  # time.time() when this process first listed it
    raw_file: str | None = None  # the `_file` value its rows carry (footer statistics), as the ledger records it


class LakeWatch:
    """The lake's files that the ledger does not have, with their rows, bytes and newest commit time: each file's
    footer is read once. `loaded` starts from the ledger and grows with every load this process makes."""

    def __init__(self, resolved: ResolvedSpec, loaded: dict[str, set[str]]) -> None:
        from bankflow.lake.filesystem import lake_filesystem

        self.resolved = resolved
        self.fs, self.root = lake_filesystem(resolved)
        self.loaded = loaded
        self._known: dict[str, LakeFileInfo] = {}

    def pending(self) -> dict[str, list[LakeFileInfo]]:
        from bankflow.stages.load import lake_files

        # s3fs keeps directory listings forever: the consumer workers (other processes) write behind its back
        self.fs.invalidate_cache()
        result: dict[str, list[LakeFileInfo]] = {}
        for table in self.resolved.spec.tables:
            done = self.loaded.setdefault(table.name, set())
            files = []
            for key in lake_files(self.resolved, table):
                if key in done:
                    continue
                info = self._known.get(key) or self._read(table, key)
                if info is not None:
                    files.append(info)
            if files:
                result[table.name] = files
        return result

    def _read(self, table: Table, key: str) -> LakeFileInfo | None:
        import pyarrow.parquet as pq

        from bankflow.status import commit_range
        from bankflow.warehouses.adapter import single_value

        path = f"{self.root}/{key}"
        try:
            size = int(self.fs.info(path).get("size") or 0)
            with self.fs.open(path, "rb") as handle:
                metadata = pq.read_metadata(handle)
        except FileNotFoundError:
            return None  # gone between listing and reading (a test cleaning up): the next scan decides
        info = LakeFileInfo(table.name, key, metadata.num_rows, size, commit_range(metadata)[1], time.time(),
                            single_value(metadata, "_file"))
        self._known[key] = info
        return info

    def schema_records(self) -> frozenset[str]:
        """The lake's schema-history records (bankflow.lake.schema_history), by path: one listing."""
        from bankflow.lake.schema_history import SCHEMA_DIR

        return frozenset(self.fs.glob(f"{self.root.rstrip('/')}/{SCHEMA_DIR}/*/*.json"))

    def mark_loaded(self, files: list[LakeFileInfo]) -> None:
        for info in files:
            self.loaded.setdefault(info.table, set()).add(info.key)
            self._known.pop(info.key, None)


@dataclass
class LedgerView:
    """What the warehouse's ledger and raw say when a run starts (and after a failed load)."""

    keys: dict[str, set[str]]  # per table: the files the ledger lists (what earlier runs and applies loaded)
    newest_commit: dict[str, str]  # per raw table: its newest source commit time (ISO), where raw has one
    position: int  # raw's position: the ledger's largest load_seq


def read_ledger(resolved: ResolvedSpec) -> LedgerView:
    """The ledger's files, raw's newest commit per table and raw's position, over one connection."""
    from bankflow.warehouses import connect_warehouse

    adapter = connect_warehouse(resolved)
    try:
        adapter.setup()
        newest: dict[str, str] = {}
        column = adapter.dialect.quote_name("_source_ts")
        for table in resolved.spec.tables:
            row = adapter.query(f"SELECT max({column}) FROM {adapter.dialect.raw_table(table)}")
            value = row[0][0] if row else None
            if isinstance(value, dt.datetime):
                value = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
                newest[table.raw_name] = value.astimezone(dt.timezone.utc).isoformat()
        return LedgerView({table.name: adapter.ledger_keys(table) for table in resolved.spec.tables}, newest,
                          adapter.raw_position())
    finally:
        adapter.close()


def consistent_files(pending: dict[str, list[LakeFileInfo]], cut: int) -> dict[str, list[LakeFileInfo]]:
    """The files whose load leaves raw holding every table's changes up to one commit point, and none past it.

    `cut`: every change committed before this LSN is in durable lake files (the built-in engine's
    acknowledgement target). A file of a table's stream spans commit LSNs [first, last]; the point starts at the
    cut and comes down to the first commit of any file that reaches it (that file waits, so the other tables
    must stop where it starts), until no file straddles it; the files wholly below it load. Snapshot and
    backfill files (other streams) carry the snapshot's or the backfill's own position: they load at or below
    the cut. Files whose names carry no LSN span load as they come.
    """
    from bankflow.lake.positions import LsnPosition, parse_file_name

    spans: list[tuple[LakeFileInfo, LsnPosition, LsnPosition, bool]] = []
    loadable: dict[str, list[LakeFileInfo]] = {}
    for table, files in pending.items():
        for info in files:
            parsed = parse_file_name(info.key.rsplit("/", 1)[-1])
            if parsed is None or not isinstance(parsed[2], LsnPosition) or not isinstance(parsed[1], LsnPosition):
                loadable.setdefault(table, []).append(info)
            else:
                spans.append((info, parsed[1], parsed[2], parsed[0] == table))
    point = cut
    while True:
        lowest = min((first.commit for _, first, last, stream in spans if stream and last.commit >= point),
                     default=point)
        if lowest >= point:
            break
        point = lowest
    for info, _first, last, stream in spans:
        if (last.commit < point) if stream else (last.commit <= cut):
            loadable.setdefault(info.table, []).append(info)
    return loadable


# ---------------------------------------------------------------- when to transform

class TransformCadence:
    """`run.transform`: an interval or a cron expression (UTC), and/or "when N rows were loaded"."""

    def __init__(self, spec: RunTransform, started: dt.datetime) -> None:
        self.spec = spec
        self.next_at = started  # the first transform runs at once: marts catch up with raw
        self.rows_since = 0
        self.tables_since: set[str] = set()

    def loaded(self, rows_by_table: dict[str, int]) -> None:
        for table, rows in rows_by_table.items():
            if rows:
                self.rows_since += rows
                self.tables_since.add(table)

    def due(self, now: dt.datetime) -> bool:
        if self.spec.after_changes is not None and self.rows_since >= self.spec.after_changes:
            return True
        return now >= self.next_at

    def start(self) -> set[str]:
        """A transform starts: the tables that got rows since the last one. Rows loaded while it runs count
        for the next one."""
        tables, self.tables_since, self.rows_since = self.tables_since, set(), 0
        return tables

    def done(self, started: dt.datetime) -> None:
        """A transform that started at `started` ran (well or not): the next one is one cadence later."""
        cron = self.spec.cron
        if cron is not None:
            import importlib

            croniter = importlib.import_module("croniter").croniter  # untyped: no stubs to install
            self.next_at = croniter(cron, started).get_next(dt.datetime)
        else:
            self.next_at = started + dt.timedelta(seconds=self.spec.interval_seconds or 60.0)


# ---------------------------------------------------------------- the loop

RUN_LOCK = "run.lock"


@contextmanager
def one_run_at_a_time(resolved: ResolvedSpec) -> Iterator[None]:
    """An exclusive lock on `<state_dir>/run.lock` for the process's life: a second `run` of the same pipeline
    (an orchestrator starting one while the last still stops) refuses at once instead of fighting over the slot
    and the warehouse. The kernel drops the lock with the process, kill -9 included."""
    import fcntl

    path = resolved.state_dir / RUN_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise BankflowError(f"another bankflow run of this pipeline is running (pid {holder}); stop it first, "
                                f"or wait for it to finish stopping (lock: {path})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


@dataclass
class RunOutcome:
    """What a `run` did, for its exit code and `--json`."""

    pipeline: str
    env: str | None
    started_at: str
    seconds: float = 0.0
    loads: int = 0
    load_errors: int = 0
    rows_loaded: dict[str, int] = field(default_factory=dict)
    files_loaded: int = 0
    transforms: int = 0
    transform_errors: int = 0
    transforms_skipped: int = 0
    last_transform_ok: bool | None = None
    cdc: dict[str, Any] | None = None
    cdc_error: str | None = None
    dead_letters: dict[str, int] = field(default_factory=dict)
    metrics_port: int | None = None
    stopped_by: str = "signal"
    # where the time between a commit and raw goes, per loaded file (the last LATENCY_SAMPLES of each):
    # its newest commit → this process listed it; listed → its load began; and each load's length
    commit_to_listed: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    listed_to_load: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    load_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    @property
    def ok(self) -> bool:
        return self.cdc_error is None and self.last_transform_ok is not False

    def to_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "env": self.env, "started_at": self.started_at, "ok": self.ok,
                "seconds": round(self.seconds, 3), "loads": self.loads, "load_errors": self.load_errors,
                "files_loaded": self.files_loaded, "rows_loaded": dict(self.rows_loaded),
                "transforms": self.transforms, "transform_errors": self.transform_errors,
                "transforms_skipped": self.transforms_skipped, "last_transform_ok": self.last_transform_ok,
                "cdc": self.cdc, "cdc_error": self.cdc_error, "dead_letters": dict(self.dead_letters),
                "metrics_port": self.metrics_port, "stopped_by": self.stopped_by,
                "latency_seconds": {"commit_to_listed": _figures(self.commit_to_listed),
                                    "listed_to_load": _figures(self.listed_to_load),
                                    "load": _figures(self.load_seconds)}}


def _figures(values: deque[float]) -> dict[str, float] | None:
    """p50 / p90 / max of the samples, rounded to ms (None without any)."""
    if not values:
        return None
    ordered = sorted(values)
    p50, p90 = (ordered[min(int(q * len(ordered)), len(ordered) - 1)] for q in (0.5, 0.9))
    return {"p50": round(p50, 3), "p90": round(p90, 3), "max": round(ordered[-1], 3), "n": len(ordered)}


class _NoMetrics:
    """Stands in for bankflow.metrics.RunMetrics when `run.metrics.port` is null: every call does nothing."""

    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


class PipelineRunner:
    """One spec in one environment, kept current until stopped. `stop` ends it as a signal would."""

    def __init__(self, resolved: ResolvedSpec, *, workers: int = 1, progress: bool = True,
                 metrics_port: int | None = -1, stop: threading.Event | None = None) -> None:
        resolved.require_set()
        self.resolved = resolved
        self.spec = resolved.spec
        self.workers = workers
        self.progress = Progress(progress)
        self.stop = stop or threading.Event()
        configured = self.spec.run.metrics.port
        self.metrics_port = configured if metrics_port == -1 else metrics_port
        self.outcome = RunOutcome(self.spec.name, resolved.env, _iso(_now()) or "")
        self.state: dict[str, Any] = {
            "pid": os.getpid(), "started_at": self.outcome.started_at, "updated_at": None,
            "last_load": None, "last_successful_load_at": None, "last_transform": None,
            "last_successful_transform_at": None, "raw_newest_commit": {}, "lake_newest_commit": None,
            "marts_as_of": None, "stopped_at": None, "metrics_port": None, "pending_files": None,
        }
        self._cdc_thread: threading.Thread | None = None
        self._cdc_done = threading.Event()
        self._transform_thread: threading.Thread | None = None
        self._transformer: Any = None  # bankflow.stages.transform.Transformer, made at the first transform
        self._state_lock = threading.Lock()  # the loop and the transform thread both write state and outcome
        self._metrics: Any = _NoMetrics()
        self._query_server: Any = None  # bankflow.query.QueryServer where the warehouse needs one
        self._transform_everything = True
        self._schema_records: frozenset[str] | None = None  # the lake's schema history when raw was last set up
        # raw's position (ledger load_seq) after the last complete load round: each transform reads raw up to it
        self._raw_position: int | None = None
        # The engine's durable cut (built-in engine: a commit LSN through which every change of every table is in
        # durable lake files), None until it reports one. Where the engine reports it, a load takes only files
        # below it, so raw holds whole source transactions across tables, and a transform sees each of them
        # complete: an account's balance with the transaction that changed it.
        self._cut_applies = bool(self.spec.cdc.engine_for(resolved).reports_durable_position)
        self._durable: int | None = None

    # ---- the whole run

    def run(self) -> RunOutcome:
        started = time.monotonic()
        from bankflow.deadletters import DeadLetters

        dead = DeadLetters(self.resolved)
        dead_before = dead.keys()
        with one_run_at_a_time(self.resolved), stop_on_signals(self.stop):
            watch: LakeWatch | None = None
            try:
                self._start_metrics()
                self._start_query_server()
                self._source()
                ledger = read_ledger(self.resolved)
                self.state["raw_newest_commit"].update(ledger.newest_commit)
                self._raw_position = ledger.position
                watch = LakeWatch(self.resolved, ledger.keys)
                self._seed_freshness()
                self._start_cdc()
                self._loop(watch)
            finally:
                self._final(watch)
                self.outcome.seconds = time.monotonic() - started
                try:
                    self.outcome.dead_letters = dead.new_since(dead_before)
                except Exception:  # an unreachable lake: the cdc error says so
                    pass
                self.state["stopped_at"] = _iso(_now())
                self._write_state()
                self._metrics.close()
                if self._query_server is not None:
                    self._query_server.close()
        return self.outcome

    def _start_query_server(self) -> None:
        """Where only one process may have the warehouse open while it writes (DuckDB), this one answers
        `bankflow query` so people can read while it loads and transforms (bankflow.query)."""
        if not self.resolved.spec.warehouse.capabilities.one_process_at_a_time:
            return
        from bankflow.query import QueryServer

        self._query_server = QueryServer(self.resolved, self._select)
        port = self._query_server.start()
        log.info("queries answered on 127.0.0.1:%d (bankflow query)", port)

    def _select(self, statement: str, limit: int | None) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        """A query endpoint's thread: opened in this process, the warehouse is the database a load or a
        transform has open at that moment (or this query's alone, briefly), read in a READ ONLY transaction."""
        from bankflow.warehouses import connect_warehouse

        adapter = connect_warehouse(self.resolved)
        try:
            return adapter.select(statement, limit)
        finally:
            adapter.close()

    def _start_metrics(self) -> None:
        if self.metrics_port is None:
            return
        from bankflow.metrics import RunMetrics

        self._metrics = RunMetrics(self.spec.name, self.resolved.env)
        self._metrics.thresholds(self.spec.monitor)
        self.outcome.metrics_port = self._metrics.serve(self.spec.run.metrics.host, self.metrics_port)
        self.state["metrics_port"] = self.outcome.metrics_port
        log.info("metrics on http://%s:%d/metrics", self.spec.run.metrics.host, self.outcome.metrics_port)

    def _source(self) -> None:
        from bankflow.stages import source

        ctx = RunContext(self.resolved, self.progress)
        result = source.run(ctx)
        self.progress.done(result)
        self._metrics.stage_finished("source", result.ok, result.seconds)
        if not result.ok:
            raise BankflowError(result.error or "the source stage failed")

    def _seed_freshness(self) -> None:
        """What raw holds from before this run counts for freshness from the start (metrics, marts_as_of)."""
        newest = self.state["raw_newest_commit"]
        for raw, stamp in newest.items():
            self._metrics.raw_newest_commit(raw, dt.datetime.fromisoformat(stamp))
        if newest:
            self.state["lake_newest_commit"] = max(newest.values())
            self._metrics.lake_newest_commit(dt.datetime.fromisoformat(self.state["lake_newest_commit"]))

    # ---- cdc: a thread streaming into the lake

    def _start_cdc(self) -> None:
        from bankflow.stages import cdc

        ctx = RunContext(self.resolved, self.progress, follow=True, stop=self.stop, workers=self.workers,
                         on_durable=self._on_durable)

        def stream() -> None:
            started = time.monotonic()
            try:
                result = cdc.run(ctx)
                self.outcome.cdc = {"events": result.events, "files": result.files, **result.details}
                self._metrics.stage_finished("cdc", True, time.monotonic() - started)
            except BankflowError as exc:
                self.outcome.cdc_error = self.resolved.redact(str(exc))
            except Exception as exc:  # reported, with the trace kept, and the run stops
                self.outcome.cdc_error = self.resolved.redact(f"{type(exc).__name__}: {exc}")
                save_traceback(self.resolved, self._log_name("cdc"))
            finally:
                if self.outcome.cdc_error is not None:
                    self._metrics.stage_finished("cdc", False, time.monotonic() - started,
                                                 error=self.outcome.cdc_error)
                    log.error("cdc stopped: %s", self.outcome.cdc_error)
                self._cdc_done.set()
                self.stop.set()  # without a stream there is nothing to keep current: the run ends

        self._cdc_thread = threading.Thread(target=stream, name="bankflow-cdc", daemon=True)
        self._cdc_thread.start()

    def _on_durable(self, lsn: int) -> None:
        """The cdc thread: every change committed before `lsn` is in durable lake files."""
        if self._durable is None or lsn > self._durable:
            self._durable = lsn

    def _loadable(self, pending: dict[str, list[LakeFileInfo]], cut: int | None) -> dict[str, list[LakeFileInfo]]:
        """The pending files a load may take now: all of them, unless the engine reports a durable cut (read
        before the lake was listed). Then only the files below the round's consistent point, so raw gains whole
        source transactions across tables (see consistent_files)."""
        if not self._cut_applies:
            return pending
        if cut is None:
            return {}
        return consistent_files(pending, cut)

    # ---- the main loop: loads; transforms in a thread of their own, one at a time

    def _loop(self, watch: LakeWatch) -> None:
        load_spec = self.spec.run.load
        cadence = TransformCadence(self.spec.run.transform, _now())
        waiting_since: float | None = None
        last_probe = 0.0
        last_state = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            cut = self._durable  # before listing: a file the listing lacks cannot be below it
            listed = watch.pending()
            self.state["pending_files"] = sum(len(files) for files in listed.values())
            pending = self._loadable(listed, cut)
            # a transform about to start takes what the lake has: its files load first, whatever the batch size
            transform_due = not self.stop.is_set() and not self._transforming() and cadence.due(_now())
            if pending:
                waiting_since = now if waiting_since is None else waiting_since
                files = [f for table_files in pending.values() for f in table_files]
                rows = sum(f.rows for f in files)
                size = sum(f.size for f in files)
                if (transform_due or rows >= load_spec.max_rows or size >= load_spec.max_bytes
                        or now - waiting_since >= load_spec.max_seconds):
                    self._load(watch, pending, cadence)
                    waiting_since = None
            if transform_due and not self.stop.is_set():
                self._start_transform(cadence)
            if now - last_probe >= PROBE_EVERY:
                self._probe()
                last_probe = now
            if now - last_state >= STATE_EVERY:
                self._write_state()
                last_state = now
            self.stop.wait(load_spec.check_seconds)

    def _final(self, watch: LakeWatch | None) -> None:
        """After a stop: let the stream flush and acknowledge and a running transform finish, then load what
        the stream wrote. (A second signal interrupts the waits: see bankflow.stopping.)"""
        self.stop.set()
        if self._cdc_thread is not None:
            self.progress.update("run", "stopping: the stream flushes its batches", force=True)
            while not self._cdc_done.wait(1.0):
                pass
        if self._transforming():
            self.progress.update("run", "stopping: the running transform finishes", force=True)
            while self._transform_thread is not None and self._transform_thread.is_alive():
                self._transform_thread.join(1.0)
        if self._transformer is not None:
            self._transformer.close()
        if watch is not None:
            try:
                pending = watch.pending()
            except Exception as exc:
                log.error("could not list the lake for the last load: %s", self.resolved.redact(str(exc)))
                return
            if pending:
                self._load(watch, pending, None)

    def _load(self, watch: LakeWatch, pending: dict[str, list[LakeFileInfo]],
              cadence: TransformCadence | None) -> None:
        started_at = _now()
        started = time.monotonic()
        result = StageResult("load")
        rows_by_table: dict[str, int] = {}
        try:
            loaded = self._load_files(watch, pending, result, rows_by_table)
        except Exception as exc:  # retried next cycle; the ledger is re-read, since it is the truth
            loaded = []
            result.ok = False
            result.error = self.resolved.redact(str(exc) if isinstance(exc, BankflowError)
                                                else f"{type(exc).__name__}: {exc}")
            log.warning("load failed, retrying next cycle: %s", result.error)
            self._schema_records = None  # and raw is set up again first
            try:
                watch.loaded.clear()
                watch.loaded.update(read_ledger(self.resolved).keys)
            except Exception:
                pass
        result.seconds = time.monotonic() - started
        self._record_load(started_at, result, rows_by_table, loaded)
        if cadence is not None:
            cadence.loaded(rows_by_table)
        if result.rows:
            self.progress.update("load", f"{result.rows:,} rows from {result.files} file(s) in "
                                         f"{result.seconds:.2f} s", force=True)
        self._write_state()

    def _load_files(self, watch: LakeWatch, pending: dict[str, list[LakeFileInfo]], result: StageResult,
                    rows_by_table: dict[str, int]) -> list[LakeFileInfo]:
        """The pending files into raw through the ledger (the warehouse is held only meanwhile)."""
        from bankflow.warehouses import connect_warehouse

        loaded: list[LakeFileInfo] = []
        # New columns the schema history accepted reach raw before their rows do: raw is set up again whenever
        # the history has records it did not have at the last setup (listed after the files, which the stream
        # writes after their record), not on every cycle.
        records = watch.schema_records()
        adapter = connect_warehouse(self.resolved)
        try:
            if records != self._schema_records:
                adapter.setup()
                self._schema_records = records
            for table in self.spec.tables:
                files = pending.get(table.name)
                if not files:
                    continue
                adapter.note_raw_files({f.key: f.raw_file for f in files if f.raw_file is not None})
                outcome = adapter.load_files(table, [f.key for f in files])
                loaded.extend(files)
                watch.mark_loaded(files)
                rows_by_table[table.raw_name] = outcome.rows
                result.rows += outcome.rows
                result.files += outcome.files
            # the round is complete: a transform from now on reads raw up to here (one that started meanwhile
            # reads up to the round before, never half of this one)
            self._raw_position = adapter.raw_position()
        finally:
            adapter.close()
        return loaded

    def _record_load(self, started_at: dt.datetime, result: StageResult, rows_by_table: dict[str, int],
                     loaded: list[LakeFileInfo]) -> None:
        """The outcome, the metrics and run_state.json's load fields (raw's newest commit per table)."""
        with self._state_lock:
            self._record_load_locked(started_at, result, rows_by_table, loaded)

    def _record_load_locked(self, started_at: dt.datetime, result: StageResult, rows_by_table: dict[str, int],
                            loaded: list[LakeFileInfo]) -> None:
        self.outcome.loads += 1
        self.outcome.load_errors += not result.ok
        self.outcome.load_seconds.append(result.seconds)
        began = started_at.timestamp()
        for info in loaded:
            if info.newest_commit is not None:
                self.outcome.commit_to_listed.append(info.seen_at - info.newest_commit.timestamp())
            self.outcome.listed_to_load.append(began - info.seen_at)
        self.outcome.files_loaded += result.files
        for table, rows in rows_by_table.items():
            self.outcome.rows_loaded[table] = self.outcome.rows_loaded.get(table, 0) + rows
        self._metrics.stage_finished("load", result.ok, result.seconds, rows_by_table=rows_by_table,
                                     error=result.error)
        self.state["last_load"] = {"at": _iso(started_at), "ok": result.ok, "rows": result.rows,
                                   "error": result.error}
        if result.ok:
            self.state["last_successful_load_at"] = _iso(started_at)
        by_raw = {t.name: t.raw_name for t in self.spec.tables}
        newest_raw: dict[str, Any] = self.state["raw_newest_commit"]
        for info in loaded:
            raw = by_raw[info.table]
            self._metrics.lake_written(info.table, 1, info.rows, info.size)
            if info.newest_commit is None:
                continue
            stamp = info.newest_commit.isoformat()
            if newest_raw.get(raw) is None or stamp > newest_raw[raw]:
                newest_raw[raw] = stamp
                self._metrics.raw_newest_commit(raw, info.newest_commit)
            if self.state["lake_newest_commit"] is None or stamp > self.state["lake_newest_commit"]:
                self.state["lake_newest_commit"] = stamp
                self._metrics.lake_newest_commit(info.newest_commit)

    def _transforming(self) -> bool:
        return self._transform_thread is not None and self._transform_thread.is_alive()

    def _start_transform(self, cadence: TransformCadence) -> None:
        """A transform in its own thread, so loads go on meanwhile (never two transforms at once). What raw held
        when it started is what it is sure to show: `marts_as_of`."""
        started_at = _now()
        changed = cadence.start()
        with self._state_lock:
            as_of = max(self.state["raw_newest_commit"].values(), default=None)
        self._transform_thread = threading.Thread(
            target=self._transform, args=(cadence, started_at, changed, as_of, self._raw_position),
            name="bankflow-transform", daemon=True)
        self._transform_thread.start()

    def _transform(self, cadence: TransformCadence, started_at: dt.datetime, changed: set[str],
                   as_of: str | None, raw_position: int | None) -> None:
        if self.spec.transform is None:
            cadence.done(started_at)
            return
        started = time.monotonic()
        # the first transform of a run, and the one after a failure, select everything: what the failed one
        # selected must not wait for its tables to change again
        everything = self._transform_everything
        error: str | None = None
        result: StageResult | None = None
        try:
            if self._transformer is None:
                from bankflow.stages.transform import Transformer

                self._transformer = Transformer(self.resolved)
            ctx = RunContext(self.resolved, self.progress)
            result = self._transformer.run(ctx, changed_tables=None if everything else changed,
                                           raw_position=raw_position)
        except BankflowError as exc:
            error = self.resolved.redact(str(exc))
        except Exception as exc:
            error = self.resolved.redact(f"{type(exc).__name__}: {exc}")
            save_traceback(self.resolved, self._log_name("transform"))
        cadence.done(started_at)
        self._transform_everything = error is not None
        seconds = time.monotonic() - started
        if result is not None and result.details.get("skipped"):
            with self._state_lock:
                self.outcome.transforms_skipped += 1
            return
        with self._state_lock:
            self.outcome.transforms += 1
            self.outcome.transform_errors += error is not None
            self.outcome.last_transform_ok = error is None
            self.state["last_transform"] = {"at": _iso(started_at), "ok": error is None, "error": error,
                                            "seconds": round(seconds, 3)}
            if error is None:
                self.state["last_successful_transform_at"] = _iso(started_at)
                self.state["marts_as_of"] = as_of
        self._metrics.stage_finished("transform", error is None, seconds, error=error)
        if error is None:
            self._metrics.marts_as_of(dt.datetime.fromisoformat(as_of) if as_of else None, [])
            self.progress.update("transform", f"done in {seconds:.2f} s", force=True)
        else:
            log.error("transform failed (the next cycle tries again): %s", error)
        self._write_state()

    # ---- probes, state, errors

    def _probe(self) -> None:
        """Slot and dead letters for the metrics, every PROBE_EVERY seconds; a failed probe is only logged."""
        try:
            from bankflow.deadletters import DeadLetters

            pending = DeadLetters(self.resolved).pending()
            self._metrics.dead_letters({table: item.events for table, item in pending.items()})
        except Exception as exc:
            log.debug("dead-letter probe failed: %s", exc)
        try:
            from bankflow.metrics import probe_slot

            slot = probe_slot(self.resolved)
            if slot is not None:
                self._metrics.slot(slot["name"], slot.get("retained_bytes"), slot.get("lag_bytes"),
                                   slot.get("wal_status"), slot.get("active"))
        except Exception as exc:
            log.debug("slot probe failed: %s", exc)

    def _write_state(self) -> None:
        with self._state_lock:
            self.state["updated_at"] = _iso(_now())
            text = json.dumps(self.state, indent=2, default=str)
        path = self.resolved.state_dir / RUN_STATE
        temporary = path.with_name(f".{RUN_STATE}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, path)  # a reader sees the old state or the new one, never half of one
        except OSError as exc:
            log.warning("could not write %s: %s", path, exc)

    def _log_name(self, stage: str) -> str:
        stamp = self.outcome.started_at.replace(":", "").replace("-", "")[:15]
        return f"run-{stamp}-{stage}"
