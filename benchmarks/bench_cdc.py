"""Throughput of the built-in CDC engine: catch-up of N committed inserts from a bank `transactions` table.

    .venv/bin/python benchmarks/bench_cdc.py --rows 1000000

Starts an embedded PostgreSQL (or uses --data-dir's), creates the table, publication and slot, inserts the rows
with INSERT … SELECT generate_series, then times `stream_to_lake` catch-up into a file:// lake and prints
events/s, seconds, files, bytes and peak RSS. Drops the slot and stops the server at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bankflow.engines.builtin.reader import drop_slot, ensure_slot, stream_to_lake  # noqa: E402
from bankflow.source.embedded import EmbeddedPostgres  # noqa: E402
from bankflow.spec.loader import load_spec  # noqa: E402

DDL = """
DROP TABLE IF EXISTS bench.transactions;
CREATE SCHEMA IF NOT EXISTS bench;
CREATE TABLE bench.transactions (
    id bigint PRIMARY KEY, account_id bigint NOT NULL, txn_type text NOT NULL, amount numeric(18,2) NOT NULL,
    related_account_id bigint, status text NOT NULL, created_at timestamptz NOT NULL
);
ALTER TABLE bench.transactions REPLICA IDENTITY FULL;
DROP PUBLICATION IF EXISTS bench_pub;
CREATE PUBLICATION bench_pub FOR TABLE bench.transactions;
"""

INSERT = """
INSERT INTO bench.transactions
SELECT g, 1 + g %% 5000, (ARRAY['deposit','withdrawal','transfer_out','transfer_in'])[1 + g %% 4],
       round((random() * 100000)::numeric, 2), CASE WHEN g %% 4 >= 2 THEN 1 + (g * 7) %% 5000 END,
       'posted', timestamptz '2024-01-01 00:00:00+00' + g * interval '1.000001 second'
FROM generate_series(%s, %s) g
"""

SPEC = """\
version: 1
name: bench
state_dir: state
source: {{database: postgres, schema: bench, port: {port}}}
tables:
  - name: transactions
    primary_key: [id]
    columns:
      - {{name: id, type: bigint, nullable: false}}
      - {{name: account_id, type: bigint, nullable: false}}
      - {{name: txn_type, type: text, nullable: false}}
      - {{name: amount, type: "numeric(18,2)", nullable: false}}
      - {{name: related_account_id, type: bigint}}
      - {{name: status, type: text, nullable: false}}
      - {{name: created_at, type: timestamptz, nullable: false}}
cdc: {{slot: bench_slot, publication: bench_pub, snapshot_mode: never}}
lake:
  url: file://lake
  flush: {{max_rows: {max_rows}}}
  compression: {compression}
warehouse: {{type: duckdb, path: wh.duckdb}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tx-rows", type=int, default=100_000, help="rows per inserting transaction")
    parser.add_argument("--max-rows", type=int, default=100_000, help="lake flush.max_rows")
    parser.add_argument("--compression", default="zstd", choices=["zstd", "snappy", "gzip", "none"])
    parser.add_argument("--data-dir", type=Path, help="Postgres data dir (default: a temporary one)")
    parser.add_argument("--profile", action="store_true", help="cProfile the catch-up, print the top 25")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-cdc-"))
    data_dir = args.data_dir or (work / "pg")
    server = EmbeddedPostgres(data_dir)
    server.start()
    resolved = None
    try:
        kwargs = server.connect_kwargs()
        spec_path = work / "bench.yaml"
        spec_path.write_text(textwrap.dedent(SPEC).format(port=kwargs["port"], max_rows=args.max_rows,
                                                          compression=args.compression))
        resolved = load_spec(spec_path, environ={})
        drop_slot(resolved, kwargs)
        server.execute(DDL)
        ensure_slot(resolved, kwargs)
        t0 = time.monotonic()
        for start in range(1, args.rows + 1, args.tx_rows):
            server.execute(INSERT, (start, min(args.rows, start + args.tx_rows - 1)))
        print(f"inserted {args.rows:,} rows in {time.monotonic() - t0:.1f} s", flush=True)

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        load0 = os.getloadavg()[0]
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        result = stream_to_lake(resolved, kwargs)
        if profiler:
            profiler.disable()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        lake_bytes = sum(p.stat().st_size for p in (work / "lake").rglob("*.parquet"))
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"events      {result.events:,}")
        print(f"seconds     {result.seconds:.2f}")
        print(f"events/s    {result.events / result.seconds:,.0f}")
        print(f"cpu seconds {cpu:.2f} in this process ({result.events / cpu:,.0f} events per CPU-second)")
        print(f"load avg    {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end (2 cores, shared)")
        print(f"files       {len(result.files)}")
        print(f"lake bytes  {lake_bytes:,} ({lake_bytes / max(result.events, 1):.1f} B/event)")
        print(f"peak RSS    {peak_rss_mb:,.0f} MB")
        print(f"confirmed   {result.confirmed_lsn} (target {result.end_lsn})")
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        if result.events != args.rows:
            print(f"ERROR: expected {args.rows} events", file=sys.stderr)
            return 1
        return 0
    finally:
        if resolved is not None:
            drop_slot(resolved, server.connect_kwargs())
        if args.data_dir is None:
            server.destroy()
        else:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
