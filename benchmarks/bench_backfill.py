"""Backfill throughput while streaming continues, and its effect on stream latency (built-in engine).

    .venv/bin/python benchmarks/bench_backfill.py --rows 500000 --chunk 10000 --rate 50 --seconds 8

Starts PostgreSQL (embedded, in a temp dir) with two tables, `events` (the stream's table: single-row inserts at
`--rate` per second, each row's commit → Parquet-in-lake latency measured) and `big` (`--rows` rows, plus
updates at `--rate` per second while the benchmark runs). Two follow-mode runs (`stream_to_lake(follow=True)`):

1. baseline: the spec has only `events`, for `--seconds`;
2. backfill: the spec has `events` and `big`, which the stream does not cover yet, so it is backfilled in
   chunks of `--chunk` rows between watermarks while the inserts and updates go on; the run lasts until the
   backfill is complete (its coverage marker says covered) and `--seconds` more.

Printed: backfill rows/s (rows in `big`'s backfill files / time from the run's start to the marker), and the
latency percentiles of `events` rows committed in the baseline and during the backfill. The machine is shared:
the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bankflow.engines.builtin.backfill import Coverage
from bankflow.engines.builtin.reader import drop_slot, stream_to_lake
from bankflow.lake.filesystem import lake_filesystem
from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import ResolvedSpec, load_spec

DDL = """
CREATE SCHEMA bench;
CREATE TABLE bench.events (id bigint PRIMARY KEY, payload text NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE bench.big (id bigint PRIMARY KEY, label text, amount numeric(12,2), created_at timestamptz);
ALTER TABLE bench.big REPLICA IDENTITY FULL;
ALTER TABLE bench.events REPLICA IDENTITY FULL;
INSERT INTO bench.big SELECT g, 'row ' || g, g / 100.0, now() FROM generate_series(1, {rows}) g;
ANALYZE bench.big;
CREATE PUBLICATION bench_pub FOR TABLE bench.events, bench.big;
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
name: backfill_bench
state_dir: {root}/state
source: {{type: postgres, database: bench, schema: bench, host: 127.0.0.1, port: {port}, embedded: false,
          sslmode: disable, password: "${{BENCH_PGPASSWORD}}"}}
tables:
{tables}cdc: {{engine: builtin, slot: bench_slot, publication: bench_pub, heartbeat_interval_ms: 0,
       backfill_chunk_rows: {chunk}}}
lake:
  url: file://{root}/lake
  layout: "{{table}}"
  flush: {{max_rows: 100000, max_bytes: 268435456, max_seconds: {max_seconds}}}
warehouse: {{type: duckdb, path: {root}/wh.duckdb}}
"""


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split(" ", 3)[:3])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class LakeWatcher(threading.Thread):
    """Polls the events directory for new Parquet files; records when each id first became visible."""

    def __init__(self, directory: Path, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.interval = interval
        self.seen: dict[int, float] = {}
        self.files: set[Path] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        import pyarrow.parquet as pq

        while not self.halt.is_set():
            now = time.time()
            for path in self.directory.glob("*.parquet") if self.directory.is_dir() else []:
                if path in self.files:
                    continue
                self.files.add(path)
                for i in pq.read_table(path, columns=["id"]).column("id").to_pylist():
                    self.seen.setdefault(i, now)
            time.sleep(self.interval)


class Writer(threading.Thread):
    """Single-row inserts into events (commit time recorded per id) and updates of big, at `rate` each."""

    def __init__(self, kwargs: dict[str, Any], rate: float, rows: int, start_id: int) -> None:
        super().__init__(daemon=True)
        self.kwargs = kwargs
        self.rate = rate
        self.rows = rows
        self.next_id = start_id
        self.committed: dict[int, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        import psycopg2

        conn = psycopg2.connect(**self.kwargs)
        conn.autocommit = True
        rnd = random.Random(1)
        period = 1.0 / self.rate
        next_at = time.monotonic()
        with conn.cursor() as cur:
            while not self.halt.is_set():
                cur.execute("INSERT INTO bench.events VALUES (%s, 'x', now())", (self.next_id,))
                self.committed[self.next_id] = time.time()
                self.next_id += 1
                cur.execute("UPDATE bench.big SET amount = amount + 1 WHERE id = %s", (rnd.randint(1, self.rows),))
                next_at += period
                time.sleep(max(0.0, next_at - time.monotonic()))
        conn.close()


def spec_for(root: Path, port: int, tables: list[str], chunk: int, max_seconds: float) -> ResolvedSpec:
    path = root / f"spec-{'-'.join(tables)}.yaml"
    path.write_text(SPEC.format(root=root, port=port, tables="".join(TABLES[t] for t in tables), chunk=chunk,
                                max_seconds=max_seconds))
    return load_spec(path)


def latencies(watcher: LakeWatcher, writer: Writer, ids: range) -> list[float]:
    return [(watcher.seen[i] - writer.committed[i]) * 1000 for i in ids if i in watcher.seen and i in writer.committed]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"rows": len(values), "p50_ms": round(statistics.median(values), 1),
            "p95_ms": round(percentile(values, 0.95), 1), "p99_ms": round(percentile(values, 0.99), 1),
            "max_ms": round(max(values), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500_000, help="rows in the table to backfill")
    parser.add_argument("--chunk", type=int, default=10_000, help="backfill_chunk_rows")
    parser.add_argument("--rate", type=float, default=50.0, help="inserts (and updates) per second")
    parser.add_argument("--seconds", type=float, default=8.0, help="baseline length, and tail after the backfill")
    parser.add_argument("--max-seconds", type=float, default=0.1, help="lake flush max_seconds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        root = Path(tmp)
        pg = EmbeddedPostgres(root / "pg")
        pg.start()
        os.environ["BENCH_PGPASSWORD"] = pg.password
        try:
            pg.create_database("bench")
            t0 = time.monotonic()
            pg.execute(DDL.format(rows=args.rows), dbname="bench")
            print(f"source: {args.rows:,} rows in bench.big ({time.monotonic() - t0:.1f} s); load {load_avg()}")
            kwargs = pg.connect_kwargs("bench")
            first = spec_for(root, kwargs["port"], ["events"], args.chunk, args.max_seconds)
            stream_to_lake(first, kwargs)  # creates the slot (events is empty)

            watcher = LakeWatcher(root / "lake" / "events")
            watcher.start()
            writer = Writer(kwargs, args.rate, args.rows, 1)

            # 1. baseline
            stop = threading.Event()
            thread = threading.Thread(target=stream_to_lake, args=(first, kwargs),
                                      kwargs={"follow": True, "stop": stop}, daemon=True)
            thread.start()
            time.sleep(1.0)
            writer.start()
            time.sleep(1.0)  # the first second is warm-up (connections, first files)
            base_from = writer.next_id
            time.sleep(args.seconds)
            base_to = writer.next_id
            time.sleep(1.0)
            stop.set()
            thread.join()

            # 2. with the backfill of big
            both = spec_for(root, kwargs["port"], ["events", "big"], args.chunk, args.max_seconds)
            fs, lake_root = lake_filesystem(both)
            coverage = Coverage(fs, lake_root, both.spec.cdc.slot)
            stop = threading.Event()
            results: dict[str, Any] = {}

            def follow() -> None:
                results["run"] = stream_to_lake(both, kwargs, follow=True, stop=stop)

            thread = threading.Thread(target=follow, daemon=True)
            started = time.monotonic()
            thread.start()
            during_from = writer.next_id
            while (coverage.read("big") or {}).get("state") != "covered":
                if not thread.is_alive():
                    raise SystemExit("the follow run ended before the backfill completed")
                time.sleep(0.05)
            backfill_seconds = time.monotonic() - started
            during_to = writer.next_id
            time.sleep(args.seconds)
            after_to = writer.next_id
            time.sleep(1.0)
            stop.set()
            thread.join()
            writer.halt.set()
            writer.join()
            watcher.halt.set()
            watcher.join()

            marker = coverage.read("big") or {}
            rows = int(marker.get("backfill", {}).get("rows", 0))
            report = {
                "rows_in_table": args.rows, "chunk_rows": args.chunk, "rate_per_s": args.rate,
                "backfill_rows": rows, "backfill_chunks": marker.get("backfill", {}).get("chunks"),
                "backfill_seconds": round(backfill_seconds, 2),
                "backfill_rows_per_s": round(rows / backfill_seconds),
                "latency_baseline": summary(latencies(watcher, writer, range(base_from, base_to))),
                "latency_during_backfill": summary(latencies(watcher, writer, range(during_from, during_to))),
                "latency_after_backfill": summary(latencies(watcher, writer, range(during_to, after_to))),
                "load_avg": load_avg(),
            }
            print(json.dumps(report, indent=2))
            drop_slot(both, kwargs)
        finally:
            pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
