"""Backfill throughput while streaming continues, and its effect on stream latency: built-in engine and Debezium.

    .venv/bin/python benchmarks/bench_backfill.py --rows 2000000 --debezium-rows 100000 --rate 200 --seconds 15

Starts PostgreSQL (embedded, in a temp dir; one database per engine) and, for the Debezium engine, Tansu and
Kafka Connect with Debezium (skipped with a note when Connect cannot start). Each database has two tables:
`events` (the stream's table: single-row inserts at `--rate` commits/s, each row's commit → Parquet-in-lake
latency measured) and `big` (`--rows` / `--debezium-rows` existing rows, updated at `--big-updates` per second
while the workload runs). Per engine, after a catch-up `apply` of a spec with `events` only (slot, connector):

1. baseline: `bankflow apply SPEC --follow --stages source,cdc` in a subprocess with the same spec, for
   `--seconds`;
2. backfill: the spec gets `big`, which the stream does not cover yet, and a new `apply --follow` backfills it
   while the workload goes on (DBLog watermark chunks on the built-in engine, an incremental snapshot on
   Debezium), until big's coverage marker in the lake says ``covered``.

Latency: a watcher in this process polls the lake's `events` directory every `--watch-ms` and reads the ids of
each new file (files are written atomically); a row's latency is when its file became visible minus the wall
time its COMMIT returned. Only rows committed after the follow run delivered its first row, plus one second of
warm-up, count (the start of a run — imports, connector registration, the backlog of the restart — is no
stream latency; the time from a run's start to its first row in the lake is printed per phase, as "first
row"). Backfill rows/s: the rows the marker reports backfilled / the time from the marker saying
``backfilling`` (written when the run plans the backfill) to it saying ``covered``.

Everything is stopped afterwards: the follow runs (SIGINT), the connector is deleted, the slots are dropped, the
servers stopped and the temp dir removed (BENCH_KEEP=1 keeps it). The machine may be shared: the load average
is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bankflow.pipeline import Pipeline
from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import load_spec

PASSWORD_VAR = "BENCH_PGPASSWORD"

DDL = """
CREATE SCHEMA bench;
CREATE TABLE bench.events (id bigint PRIMARY KEY, payload text NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE bench.big (id bigint PRIMARY KEY, label text, amount numeric(12,2), created_at timestamptz);
ALTER TABLE bench.events REPLICA IDENTITY FULL;
ALTER TABLE bench.big REPLICA IDENTITY FULL;
INSERT INTO bench.events VALUES (0, 'first', now());
INSERT INTO bench.big SELECT g, 'row ' || g, g / 100.0, now() FROM generate_series(1, {rows}) g;
ANALYZE bench.big;
"""

TABLES = {
    "events": """\
  - name: events
    primary_key: [id]
    columns:
      - {name: id, type: bigint, nullable: false}
      - {name: payload, type: text, nullable: false}
      - {name: created_at, type: timestamptz, nullable: false}
""",
    "big": """\
  - name: big
    primary_key: [id]
    columns:
      - {name: id, type: bigint, nullable: false}
      - {name: label, type: text}
      - {name: amount, type: "numeric(12,2)"}
      - {name: created_at, type: timestamptz}
""",
}

SPEC = """\
version: 1
name: backfill_bench_{engine}
state_dir: {root}/state
source:
  type: postgres
  embedded: false
  host: 127.0.0.1
  port: {port}
  user: {user}
  password: ${{{variable}}}
  database: {database}
  schema: bench
  sslmode: disable
  manage: [publication, replica_identity, heartbeat, slot{signal}]
tables:
{tables}cdc:
  engine: {engine}
  topic_prefix: bb{tag}
  slot: bb_{engine}_{tag}
  publication: bb_{engine}_{tag}
  heartbeat_interval_ms: 0
  backfill_chunk_rows: {chunk}
{debezium}lake:
  url: file://{root}/lake
  layout: "{{table}}"
  flush: {{max_rows: 1000000, max_bytes: 268435456, max_seconds: {max_seconds}}}
warehouse: {{type: duckdb, path: {root}/wh.duckdb}}
"""

DEBEZIUM = """\
  connect_url: {connect_url}
  connector: bb-{tag}
kafka: {{bootstrap_servers: "{bootstrap}", group: bb-{tag}, partitions: 1}}
"""


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split(" ", 3)[:3])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class LakeWatcher(threading.Thread):
    """Polls a lake directory for new Parquet files; records when each row id was first visible."""

    def __init__(self, directory: Path, interval: float) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.interval = interval
        self.seen: dict[int, float] = {}
        self.files: set[str] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        import pyarrow.parquet as pq

        while not self.halt.is_set():
            now = time.time()
            for path in self.directory.rglob("*.parquet") if self.directory.is_dir() else []:
                key = str(path)
                if key in self.files:
                    continue
                try:
                    ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
                except Exception:  # not readable yet: next round
                    continue
                self.files.add(key)
                for row_id in ids:
                    self.seen.setdefault(row_id, now)
            self.halt.wait(self.interval)


class Writer(threading.Thread):
    """The steady workload: single-row inserts into events at `rate` commits/s (the wall time each COMMIT
    returned, per id), and single-row updates of big at `updates` per second. Starts paused."""

    def __init__(self, kwargs: dict[str, Any], rate: float, updates: float, big_rows: int) -> None:
        super().__init__(daemon=True)
        self.kwargs = kwargs
        self.rate = rate
        self.updates = updates
        self.big_rows = big_rows
        self.next_id = 1
        self.committed: dict[int, float] = {}
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        import psycopg2

        try:
            conn = psycopg2.connect(**self.kwargs)
            conn.autocommit = True
            rnd = random.Random(1)
            period = 1.0 / self.rate
            update_share = self.updates / self.rate
            with conn.cursor() as cur:
                while not self.halt.is_set():
                    if not self.running.wait(0.1):
                        continue
                    next_at = time.monotonic()
                    while self.running.is_set() and not self.halt.is_set():
                        cur.execute("INSERT INTO bench.events VALUES (%s, 'x', now())", (self.next_id,))
                        with self.lock:
                            self.committed[self.next_id] = time.time()
                        self.next_id += 1
                        if rnd.random() < update_share:
                            cur.execute("UPDATE bench.big SET amount = amount + 1 WHERE id = %s",
                                        (rnd.randint(1, self.big_rows),))
                        next_at += period
                        pause = next_at - time.monotonic()
                        if pause > 0:
                            time.sleep(pause)
            conn.close()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def rows_between(self, start: float, end: float) -> list[int]:
        with self.lock:
            items = list(self.committed.items())
        return [i for i, t in items if start <= t <= end]


class Follow:
    """`bankflow apply SPEC --follow --stages source,cdc` in a subprocess; SIGINT stops it (it flushes, acks)."""

    def __init__(self, spec: Path, log: Path) -> None:
        self.log = log
        self.handle = log.open("ab")
        self.started = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", "bankflow", "apply", str(spec), "--follow",
                                      "--stages", "source,cdc", "-q"], stdout=self.handle,
                                     stderr=subprocess.STDOUT, cwd=spec.parent, env=dict(os.environ))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.handle.close()
        return self.proc.returncode

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Result:
    engine: str
    rows_in_table: int
    backfill_rows: int = 0
    backfill_seconds: float = 0.0
    run_to_covered_seconds: float = 0.0
    baseline: list[float] = field(default_factory=list)
    during: list[float] = field(default_factory=list)
    workload_rate: float = 0.0
    missing: int = 0
    first_row_baseline: float = 0.0  # seconds from a follow run's start to its first workload row in the lake
    first_row_backfill: float = 0.0
    overlap: float = 0.0  # the share of the backfill's time its latency window covers
    load: str = ""
    note: str = ""

    def summary(self, values: list[float]) -> dict[str, Any]:
        if not values:
            return {"rows": 0}
        return {"rows": len(values), "p50_ms": round(statistics.median(values), 1),
                "p90_ms": round(percentile(values, 0.90), 1), "p99_ms": round(percentile(values, 0.99), 1),
                "max_ms": round(max(values), 1)}

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "rows_in_table": self.rows_in_table, "backfill_rows": self.backfill_rows,
                "backfill_seconds": round(self.backfill_seconds, 2),
                "run_start_to_covered_seconds": round(self.run_to_covered_seconds, 2),
                "backfill_rows_per_s": round(self.backfill_rows / self.backfill_seconds)
                if self.backfill_seconds else None,
                "latency_baseline": self.summary(self.baseline), "latency_during_backfill": self.summary(self.during),
                "workload_commits_per_s": round(self.workload_rate, 1), "missing": self.missing,
                "latency_window_share_of_backfill": round(self.overlap, 2),
                "first_row_seconds": {"baseline": round(self.first_row_baseline, 1),
                                      "backfill": round(self.first_row_backfill, 1)},
                "load_avg": self.load, "note": self.note}


class Bench:
    """One engine's run: its database, spec, workload and two follow phases."""

    def __init__(self, engine: str, pg: EmbeddedPostgres, root: Path, rows: int, args: argparse.Namespace,
                 services: dict[str, str]) -> None:
        self.engine = engine
        self.pg = pg
        self.root = root
        self.rows = rows
        self.args = args
        self.services = services
        self.tag = uuid.uuid4().hex[:6]
        self.database = f"bb_{engine}_{self.tag}"
        self.spec_path = root / "pipeline.yaml"
        self.slot = f"bb_{engine}_{self.tag}"
        self.connector = f"bb-{self.tag}"
        root.mkdir(parents=True, exist_ok=True)

    def write_spec(self, tables: list[str]) -> None:
        kwargs = self.pg.connect_kwargs(self.database)
        debezium = DEBEZIUM.format(tag=self.tag, **self.services) if self.engine == "debezium" else ""
        self.spec_path.write_text(SPEC.format(
            engine=self.engine, root=self.root, port=kwargs["port"], user=kwargs["user"], variable=PASSWORD_VAR,
            database=self.database, signal=", signal" if self.engine == "debezium" else "",
            tables="".join(TABLES[t] for t in tables), tag=self.tag, chunk=self.args.chunk, debezium=debezium,
            max_seconds=self.args.max_seconds), encoding="utf-8")

    def marker(self) -> dict[str, Any]:
        path = self.root / "lake" / "_bankflow" / f"coverage-{self.slot}" / "big.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def setup(self) -> None:
        self.pg.create_database(self.database)
        started = time.monotonic()
        self.pg.execute(DDL.format(rows=self.rows), dbname=self.database)
        print(f"[{self.engine}] source: {self.rows:,} rows in bench.big ({time.monotonic() - started:.1f} s)",
              flush=True)
        self.write_spec(["events"])
        report = Pipeline(load_spec(self.spec_path)).apply(stages=["source", "cdc"], progress=False)
        if not report.ok:
            raise SystemExit(f"[{self.engine}] catch-up apply failed: {report.to_dict()}")
        if self.engine == "debezium":  # a consumer sees a topic created later only at its next metadata refresh
            prefix = load_spec(self.spec_path).spec.cdc.topic_prefix
            for name in ("events", "big"):
                create_topic(self.services["bootstrap"], f"{prefix}.bench.{name}")

    def wait_first_row(self, follow: Follow, watcher: LakeWatcher, writer: Writer, since: float,
                       timeout: float = 180.0) -> float:
        """When the follow run delivered its first row committed after `since` (the wall time it was seen)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fresh = [watcher.seen[i] for i in writer.rows_between(since, time.time()) if i in watcher.seen]
            if fresh:
                return min(fresh)
            if not follow.alive():
                raise SystemExit(f"[{self.engine}] the follow run ended:\n{follow.tail()}")
            time.sleep(0.05)
        raise SystemExit(f"[{self.engine}] no row reached the lake within {timeout:.0f} s:\n{follow.tail()}")

    def drain(self, watcher: LakeWatcher, ids: list[int], timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(i not in watcher.seen for i in ids):
            time.sleep(0.05)
        return sum(i not in watcher.seen for i in ids)

    def run(self) -> Result:
        args = self.args
        result = Result(self.engine, self.rows)
        self.setup()
        watcher = LakeWatcher(self.root / "lake" / "events", args.watch_ms / 1000)
        watcher.start()
        writer = Writer(self.pg.connect_kwargs(self.database), args.rate, args.big_updates, self.rows)
        writer.start()
        follow: Follow | None = None
        try:
            # 1. baseline: events only
            follow = Follow(self.spec_path, self.root / "follow-baseline.log")
            writer.running.set()
            ready = self.wait_first_row(follow, watcher, writer, follow.started)
            time.sleep(max(0.0, ready + args.warmup - time.time()))
            base_from = time.time()
            time.sleep(args.seconds)
            base_to = time.time()
            writer.running.clear()
            base_ids = writer.rows_between(base_from, base_to)
            result.missing += self.drain(watcher, base_ids)
            follow.stop()
            result.baseline = [(watcher.seen[i] - writer.committed[i]) * 1000 for i in base_ids if i in watcher.seen]
            result.first_row_baseline = ready - follow.started
            print(f"[{self.engine}] baseline: first row {ready - follow.started:.1f} s after the run's start, "
                  f"{len(base_ids)} rows in {base_to - base_from:.1f} s", flush=True)

            # 2. big added to the spec: backfilled while the stream goes on
            self.write_spec(["events", "big"])
            follow = Follow(self.spec_path, self.root / "follow-backfill.log")
            started = follow.started
            writer.running.set()
            marked: float | None = None
            first: float | None = None
            deadline = time.monotonic() + args.timeout
            while True:
                marker = self.marker()
                now = time.time()
                if marked is None and marker.get("state") == "backfilling":
                    marked = now
                if marker.get("state") == "covered" and marker.get("how") == "backfill":
                    covered_at = now
                    break
                if first is None:
                    fresh = [watcher.seen[i] for i in writer.rows_between(started, now) if i in watcher.seen]
                    first = min(fresh) if fresh else None
                if not follow.alive():
                    raise SystemExit(f"[{self.engine}] the follow run ended before the backfill:\n{follow.tail()}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"[{self.engine}] the backfill did not finish within {args.timeout:.0f} s: "
                                     f"{marker}\n{follow.tail()}")
                time.sleep(0.05)
            writer.running.clear()
            during_from = (first if first is not None else covered_at) + args.warmup
            during_ids = writer.rows_between(during_from, covered_at)
            result.missing += self.drain(watcher, during_ids)
            follow.stop()
            follow = None
            result.during = [(watcher.seen[i] - writer.committed[i]) * 1000 for i in during_ids
                             if i in watcher.seen]
            result.backfill_rows = int((marker.get("backfill") or {}).get("rows") or 0)
            result.backfill_seconds = covered_at - (marked if marked is not None else started)
            result.run_to_covered_seconds = covered_at - started
            if not result.during:
                result.note = "backfill ended within the warm-up: no rows during it (raise the rows)"
            elapsed = base_to - base_from
            result.workload_rate = len(base_ids) / elapsed if elapsed > 0 else 0.0
            result.load = load_avg()
            result.first_row_backfill = (first or covered_at) - started
            if result.backfill_seconds > 0:
                result.overlap = max(0.0, covered_at - during_from) / result.backfill_seconds
            print(f"[{self.engine}] backfill: marker backfilling {(marked or started) - started:.1f} s after the run's "
                  f"start, first row {(first or covered_at) - started:.1f} s, covered {covered_at - started:.1f} s: "
                  f"{result.backfill_rows:,} rows in {result.backfill_seconds:.1f} s, {len(during_ids)} workload "
                  f"rows measured during it", flush=True)
        finally:
            if follow is not None:
                follow.stop()
            writer.halt.set()
            writer.running.clear()
            writer.join(10)
            watcher.halt.set()
            watcher.join(10)
            self.cleanup()
        if writer.error is not None:
            raise SystemExit(f"[{self.engine}] the workload failed: {writer.error!r}")
        return result

    def cleanup(self) -> None:
        if self.engine == "debezium":
            from bankflow.engines.debezium.connect import ConnectClient

            try:
                ConnectClient(self.services["connect_url"]).delete(self.connector)
            except Exception as exc:
                print(f"[{self.engine}] could not delete the connector: {exc}", file=sys.stderr)
        if not self.pg.is_running():
            return
        deadline = time.monotonic() + 30
        while True:
            rows = self.pg.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
            if not rows:
                break
            if rows[0][0] is not None and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            if rows[0][0] is not None:
                self.pg.execute("SELECT pg_terminate_backend(%s)", (rows[0][0],))
                time.sleep(0.5)
            self.pg.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,), dbname=self.database)
            break
        self.pg.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def create_topic(bootstrap: str, name: str, timeout: float = 10.0) -> None:
    """A topic with one partition; one that exists already is fine."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)],
                                  operation_timeout=timeout, request_timeout=timeout)
    try:
        futures[name].result(timeout=timeout)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise


def fmt(summary: dict[str, Any], key: str) -> str:
    return f"{summary[key]:,.0f}" if key in summary else "n/a"


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    print(f"\nbackfill while streaming: workload {args.rate:g} single-row commits/s into events "
          f"(+{args.big_updates:g} updates/s of big), flush max_seconds {args.max_seconds:g}, "
          f"chunks of {args.chunk:,} rows, lake polled every {args.watch_ms:g} ms")
    print(f"{'':9s} {'backfill':^28s} | {'commit → lake latency, ms':^39s} | {'first row, s':^13s}")
    print(f"{'engine':9s} {'rows':>9s} {'seconds':>8s} {'rows/s':>9s} | {'baseline p50':>12s} {'p90':>6s} "
          f"{'during p50':>11s} {'p90':>6s} | {'base':>6s} {'b/fill':>6s}")
    for r in results:
        d = r.to_dict()
        base, during = d["latency_baseline"], d["latency_during_backfill"]
        rate = f"{d['backfill_rows_per_s']:,}" if d["backfill_rows_per_s"] else "n/a"
        print(f"{r.engine:9s} {r.backfill_rows:>9,} {r.backfill_seconds:>8.1f} {rate:>9s} | "
              f"{fmt(base, 'p50_ms'):>12s} {fmt(base, 'p90_ms'):>6s} {fmt(during, 'p50_ms'):>11s} "
              f"{fmt(during, 'p90_ms'):>6s} | {r.first_row_baseline:>6.1f} {r.first_row_backfill:>6.1f}")
    for r in results:
        d = r.to_dict()
        print(f"  {r.engine}: baseline {d['latency_baseline']}")
        print(f"  {' ' * len(r.engine)}  during   {d['latency_during_backfill']}")
        print(f"  {' ' * len(r.engine)}  run start → covered {d['run_start_to_covered_seconds']} s; latency window "
              f"{r.overlap:.0%} of the backfill; workload {d['workload_commits_per_s']} commits/s; "
              f"{r.missing} rows missing; load {r.load}" + (f"; {r.note}" if r.note else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--engine", choices=["both", "builtin", "debezium"], default="both",
                        help="both (the default) skips Debezium when Kafka Connect cannot start")
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the table to backfill (built-in)")
    parser.add_argument("--debezium-rows", type=int, default=100_000, help="rows of the table to backfill (Debezium)")
    parser.add_argument("--chunk", type=int, default=10_000, help="backfill_chunk_rows")
    parser.add_argument("--rate", type=float, default=200.0, help="single-row commits per second into events")
    parser.add_argument("--big-updates", type=float, default=10.0, help="updates of big per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the baseline")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds after a run's first row not counted")
    parser.add_argument("--max-seconds", type=float, default=0.2, help="the lake flush policy's max_seconds")
    parser.add_argument("--watch-ms", type=float, default=10.0, help="lake polling interval")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up on a backfill after this long")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    pg = EmbeddedPostgres(tmp / "pg")
    results: list[Result] = []
    broker: Any = None
    worker: Any = None
    started = time.monotonic()
    try:
        pg.start()
        os.environ[PASSWORD_VAR] = pg.password  # the specs and the Connect worker (started below) read it
        if args.engine in ("both", "builtin"):
            results.append(Bench("builtin", pg, tmp / "builtin", args.rows, args, {}).run())
        if args.engine in ("both", "debezium"):
            from bankflow.process import ServiceError
            from tests.harness.connect import KafkaConnectWorker
            from tests.harness.tansu import TansuBroker

            try:
                broker = TansuBroker(log_path=tmp / "tansu.log")
                broker.start()
                worker = KafkaConnectWorker(broker.bootstrap_servers, tmp / "connect")
                worker.start()
            except (ServiceError, OSError) as exc:
                if args.engine == "debezium":
                    raise
                print(f"[debezium] skipped: Kafka Connect with Debezium did not start ({exc})", flush=True)
            else:
                services = {"connect_url": worker.rest_url, "bootstrap": broker.bootstrap_servers}
                results.append(Bench("debezium", pg, tmp / "debezium", args.debezium_rows, args, services).run())
    finally:
        if worker is not None:
            worker.stop()
        if broker is not None:
            broker.stop()
        pg.destroy()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print_table(results, args)
    print(f"total {time.monotonic() - started:.0f} s")
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
