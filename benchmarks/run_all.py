"""Run every benchmark in turn and print their figures (`make bench`). Not part of the test suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ("built-in CDC → Parquet (1M rows, catch-up)", ["bench_cdc.py"]),
    ("workload generator (1M transactions)", ["bench_generate.py", "--transactions", "1000000"]),
    ("full apply on local (1M transactions)", ["bench_apply.py", "--transactions", "1000000"]),
    ("Kafka → Parquet consumer vs seed-style consumer", ["bench_kafka_consume.py", "--events", "1000000"]),
    ("commit → Parquet-in-lake latency, Debezium follow vs built-in", ["bench_latency.py"]),
    ("backfill while streaming, built-in (2M rows) and Debezium (100k): rows/s and stream latency",
     ["bench_backfill.py"]),
    ("commit → raw and commit → mart under bankflow run, local and stack (200 commits/s, 120 s)",
     ["bench_freshness.py"]),
    ("the same small delta transformed on 0, 1M and 5M transactions of history; dbt's fixed cost per cycle",
     ["bench_transform_scaling.py"]),
]


def main() -> int:
    failed = 0
    for title, command in BENCHMARKS:
        script = HERE / command[0]
        print(f"\n=== {title}: {' '.join(command)}", flush=True)
        if not script.is_file():
            print("   (not present)")
            continue
        failed += subprocess.call([sys.executable, str(script), *command[1:]]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
