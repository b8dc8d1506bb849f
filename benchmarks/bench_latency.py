"""Commit → Parquet-in-lake latency, per row: Debezium in follow mode against the built-in engine.

    .venv/bin/python benchmarks/bench_latency.py --rate 20 --seconds 20 --max-seconds 0.2

Starts PostgreSQL (embedded, in a temp dir), Tansu, Kafka Connect with Debezium, and a file:// lake. For each
engine in turn: one table, one follow-mode pipeline in a thread (`consume_to_lake(follow=True)` after the
connector is registered and caught up; `stream_to_lake(follow=True)` for the built-in reader), then single-row
transactions at a steady pace. Each row's latency is the time its Parquet file became visible in the lake (a
watcher polls the lake directory every `--watch-ms` and reads the ids of every new file; files are written
atomically) minus the wall time its COMMIT returned. The lake's flush policy is `max_seconds` (small) with a
huge `max_rows`, so the figure is the end-to-end latency a follow-mode consumer gives at that policy.

Everything is stopped afterwards; the connector is deleted and both slots are dropped. The machine is shared:
the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import ResolvedSpec, load_spec
from tests.harness.connect import KafkaConnectWorker
from tests.harness.tansu import TansuBroker

SPEC = """\
version: 1
name: latency
state_dir: state-{engine}
source: {{type: postgres, database: bench, schema: bench, host: 127.0.0.1, port: {port}, embedded: false,
          sslmode: disable, password: "${{BENCH_PGPASSWORD}}"}}
tables:
  - name: events
    primary_key: [id]
    columns:
      - {{name: id, type: bigint, nullable: false}}
      - {{name: payload, type: text, nullable: false}}
      - {{name: created_at, type: timestamptz, nullable: false}}
cdc: {{engine: {engine}, topic_prefix: lat{tag}, slot: lat_{engine}_{tag}, publication: lat_{tag},
       heartbeat_interval_ms: 0{connector}}}
kafka: {{bootstrap_servers: "{bootstrap}", group: lat-{tag}, partitions: 1}}
lake:
  url: file://{lake}
  flush: {{max_rows: 10000000, max_bytes: 1073741824, max_seconds: {max_seconds}}}
warehouse: {{type: duckdb, path: wh.duckdb}}
"""


def load_avg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class LakeWatcher(threading.Thread):
    """Polls the lake for new Parquet files; records when each row id was first visible."""

    def __init__(self, root: Path, interval: float) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.seen: dict[int, float] = {}
        self.files: set[str] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        import pyarrow.parquet as pq

        while not self.halt.is_set():
            now = time.time()
            for path in self.root.rglob("*.parquet"):
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


def write_rows(pg: EmbeddedPostgres, first_id: int, rate: float, seconds: float) -> dict[int, float]:
    """Single-row transactions at a steady pace; {id: wall time the COMMIT returned}."""
    conn = pg.connect("bench")
    committed: dict[int, float] = {}
    try:
        with conn.cursor() as cur:
            count = int(rate * seconds)
            start = time.monotonic()
            for i in range(count):
                due = start + i / rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                row_id = first_id + i
                cur.execute("INSERT INTO bench.events (id, payload, created_at) VALUES (%s, %s, now())",
                            (row_id, f"row {row_id}"))
                conn.commit()
                committed[row_id] = time.time()
    finally:
        conn.close()
    return committed


def wait_visible(watcher: LakeWatcher, ids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        missing = [i for i in ids if i not in watcher.seen]
        if not missing:
            return []
        time.sleep(0.05)
    return [i for i in ids if i not in watcher.seen]


def measure(name: str, resolved: ResolvedSpec, pg: EmbeddedPostgres, start_follow: Callable[[threading.Event],
            threading.Thread], args: argparse.Namespace, first_id: int) -> dict[str, Any]:
    lake = resolved.resolve_path(resolved.spec.lake.url)
    lake.mkdir(parents=True, exist_ok=True)
    watcher = LakeWatcher(lake, args.watch_ms / 1000)
    watcher.start()
    stop = threading.Event()
    follower = start_follow(stop)
    try:
        # Warm-up: one row through the whole path (group join, topic metadata, first file).
        warm = write_rows(pg, first_id, 1.0, 1.0)
        missing = wait_visible(watcher, list(warm), 120.0)
        if missing:
            raise SystemExit(f"{name}: warm-up row never reached the lake")
        committed = write_rows(pg, first_id + 1, args.rate, args.seconds)
        missing = wait_visible(watcher, list(committed), 60.0)
    finally:
        stop.set()
        follower.join(timeout=60)
        watcher.halt.set()
        watcher.join()
    latencies = [watcher.seen[i] - t for i, t in committed.items() if i in watcher.seen]
    return {
        "engine": name, "rows": len(committed), "missing": len(missing), "files": len(watcher.files),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p90_ms": round(1000 * percentile(latencies, 0.90), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "max_ms": round(1000 * max(latencies), 1),
        "min_ms": round(1000 * min(latencies), 1),
        "loadavg": load_avg(),
    }


def thread(target: Callable[[], Any]) -> threading.Thread:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)
            print(f"follow thread failed: {exc!r}", file=sys.stderr)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="single-row transactions per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-seconds", type=float, default=0.2, help="the lake flush policy's max_seconds")
    parser.add_argument("--watch-ms", type=float, default=10.0, help="lake polling interval")
    parser.add_argument("--engines", default="debezium,builtin")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]

    from bankflow.engines.debezium.catchup import register_connector, wait_for_debezium
    from bankflow.stages.base import Progress, RunContext
    from bankflow.stages.source import ensure_source

    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    tag = uuid.uuid4().hex[:6]
    pg = EmbeddedPostgres(tmp / "pg")
    broker = TansuBroker(log_path=tmp / "tansu.log")
    worker: KafkaConnectWorker | None = None
    results: list[dict[str, Any]] = []
    slots: list[str] = []
    connector: tuple[str, str] | None = None
    try:
        pg.start()
        pg.create_database("bench")
        os.environ["BENCH_PGPASSWORD"] = pg.password  # the spec (and the Connect worker started below) read it

        def spec_for(engine: str, connect_url: str, bootstrap: str) -> ResolvedSpec:
            path = tmp / f"{engine}.yaml"
            # connector settings are the Debezium engine's own
            connector = f', connector: lat-{tag}, connect_url: "{connect_url}"' if engine == "debezium" else ""
            path.write_text(SPEC.format(engine=engine, port=pg.port, tag=tag, connector=connector,
                                        bootstrap=bootstrap, lake=tmp / f"lake-{engine}",
                                        max_seconds=args.max_seconds))
            return load_spec(path)

        next_id = 1
        if "debezium" in engines:
            broker.start()
            worker = KafkaConnectWorker(broker.bootstrap_servers, tmp / "connect")
            worker.start()
            resolved = spec_for("debezium", worker.rest_url, broker.bootstrap_servers)
            ctx = RunContext(resolved, Progress(False))
            ensure_source(resolved, ctx.source_connect_kwargs())
            register_connector(ctx)
            connector = (worker.rest_url, resolved.spec.cdc.connector)
            slots.append(resolved.spec.cdc.slot)
            wait_for_debezium(ctx)
            # The table is empty, so Debezium has not created its topic yet; a consumer subscribed to a missing
            # topic only notices it at librdkafka's next metadata refresh (topic.metadata.refresh.interval.ms,
            # 5 min by default), so create it first.
            broker.create_topic(next(iter(resolved.spec.tables_by_topic)))

            def follow_debezium(stop: threading.Event, resolved: ResolvedSpec = resolved) -> threading.Thread:
                from bankflow.engines.debezium.consumer import consume_to_lake

                return thread(lambda: consume_to_lake(resolved, follow=True, stop=stop))

            results.append(measure("debezium", resolved, pg, follow_debezium, args, next_id))
            next_id += 1_000_000
            from bankflow.engines.debezium.connect import ConnectClient

            ConnectClient(worker.rest_url).delete(resolved.spec.cdc.connector)
            connector = None
            worker.stop()  # the JVM would otherwise compete with the built-in run for the two cores
            broker.stop()

        if "builtin" in engines:
            resolved = spec_for("builtin", "http://127.0.0.1:9", "127.0.0.1:9")
            ctx = RunContext(resolved, Progress(False))
            kwargs = ctx.source_connect_kwargs()
            ensure_source(resolved, kwargs)
            slots.append(resolved.spec.cdc.slot)

            def follow_builtin(stop: threading.Event, resolved: ResolvedSpec = resolved,
                               kwargs: dict[str, Any] = kwargs) -> threading.Thread:
                from bankflow.engines.builtin.reader import stream_to_lake

                return thread(lambda: stream_to_lake(resolved, kwargs, follow=True, stop=stop))

            results.append(measure("builtin", resolved, pg, follow_builtin, args, next_id))
    finally:
        if connector is not None:
            from bankflow.engines.debezium.connect import ConnectClient

            ConnectClient(connector[0]).delete(connector[1])
        if worker is not None:
            worker.stop()
        broker.stop()
        if pg.is_running():
            for slot in slots:
                for _ in range(50):
                    rows = pg.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
                    if not rows or rows[0][0] is None:
                        break
                    time.sleep(0.2)
                if pg.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)):
                    pg.execute("SELECT pg_drop_replication_slot(%s)", (slot,), dbname="bench")
        pg.destroy()
        if not os.environ.get("BENCH_KEEP"):
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"commit → Parquet visible in the lake, {args.rate:g} single-row txns/s for {args.seconds:g} s, "
              f"flush max_seconds {args.max_seconds:g}, lake polled every {args.watch_ms:g} ms")
        for r in results:
            print(f"  {r['engine']:9s} p50 {r['p50_ms']:7.1f} ms  p90 {r['p90_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms"
                  f"  max {r['max_ms']:7.1f} ms  min {r['min_ms']:6.1f} ms  ({r['rows']} rows, {r['files']} files, "
                  f"{r['missing']} missing; loadavg {r['loadavg']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
