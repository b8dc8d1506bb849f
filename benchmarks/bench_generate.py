"""Throughput of the banking workload's bulk mode: how fast can bankflow fill a source for CDC benchmarks?

Starts a throwaway EmbeddedPostgres (wal_level=logical, like a real CDC source) in a temp dir, creates the
banking source tables, writes N transaction rows with ``WorkloadOptions(transactions=N)``, checks that the
books still balance, prints rows/s, seconds and peak RSS, and stops the server.

    .venv/bin/python benchmarks/bench_generate.py --transactions 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bankflow.generate import WorkloadOptions, run_workload  # noqa: E402
from bankflow.source.embedded import EmbeddedPostgres  # noqa: E402

WORKLOAD = ROOT / "pipelines" / "workloads" / "banking.py"
SCHEMA = "banking"


def source_ddl() -> str:
    """The DDL the pipeline's source stage runs for pipelines/banking.yaml (REPLICA IDENTITY FULL included)."""
    from bankflow.source.ddl import source_statements
    from bankflow.spec.loader import load_spec

    resolved = load_spec(ROOT / "pipelines" / "banking.yaml", environ={}, check_dbt=False)
    assert resolved.spec.source.schema_name == SCHEMA
    return ";\n".join(source_statements(resolved)) + ";"
RECONCILE = """
select count(*) from accounts a left join (
  select account_id, sum(case when txn_type in ('DEPOSIT', 'TRANSFER_IN') then amount else -amount end) as net
  from transactions group by account_id) t on t.account_id = a.id
where a.balance <> a.opening_balance + coalesce(t.net, 0) or a.balance < 0
"""


def _peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class BackendCpu:
    """CPU seconds of the workload's PostgreSQL backends, read from /proc while they run.

    On a shared machine wall-clock rows/s says as much about the neighbours as about bankflow; CPU time per
    row says what the pipeline costs, and what an idle machine would approach.
    """

    def __init__(self, server: EmbeddedPostgres) -> None:
        self.server = server
        self.pids: set[int] = set()
        self.by_pid: dict[int, float] = {}

    @property
    def seconds(self) -> float:
        return sum(self.by_pid.values())

    def sample(self, _info: dict[str, Any]) -> None:
        if not self.pids:
            rows = self.server.execute("select pid from pg_stat_activity where application_name = 'bankflow-generate'")
            self.pids = {pid for (pid,) in rows}
        ticks = os.sysconf("SC_CLK_TCK")
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            self.by_pid[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=1_000_000, help="transaction rows to write")
    parser.add_argument("--batch-size", type=int, default=5000, help="transaction rows per database transaction")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-check", action="store_true", help="skip the reconciliation query at the end")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bankflow-bench-generate-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg")
        started = time.perf_counter()
        server.start()
        try:
            startup = time.perf_counter() - started
            server.execute(source_ddl())
            backend = BackendCpu(server)
            cpu_before = _own_cpu_seconds()
            result = run_workload(
                WORKLOAD,
                server.connect_kwargs(),
                SCHEMA,
                WorkloadOptions(seed=args.seed, transactions=args.transactions, batch_size=args.batch_size),
                progress=backend.sample,
            )
            python_cpu = _own_cpu_seconds() - cpu_before
            bad = None if args.no_check else server.execute(f"set search_path to {SCHEMA};" + RECONCILE)[0][0]
            size = server.execute("select pg_size_pretty(pg_database_size('postgres'))")[0][0]
        finally:
            server.destroy()

    txn_rows = result.inserted.get("transactions", 0)
    report = {
        "transactions": txn_rows,
        "seconds": round(result.seconds, 3),
        "transaction_rows_per_s": round(txn_rows / result.seconds),
        "all_rows_per_s": round(result.rows / result.seconds),
        "db_transactions": result.db_transactions,
        "inserted": result.inserted,
        "updated": result.updated,
        "deleted": result.deleted,
        "unreconciled_accounts": bad,
        "database_size": size,
        "python_cpu_s": round(python_cpu, 2),
        "backend_cpu_s": round(backend.seconds, 2),
        "postgres_backends": len(backend.pids),
        # Bounded by the two cores together and by the busiest single thread (python's main thread at most).
        "rows_per_s_on_idle_2_cores_estimate": round(
            txn_rows
            / max((python_cpu + backend.seconds) / 2, python_cpu, backend.seconds / max(len(backend.pids), 1), 1e-9)
        ),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "postgres_startup_s": round(startup, 2),
        "peak_rss_mb_python": round(_peak_rss_mb(resource.RUSAGE_SELF), 1),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"bulk workload: {txn_rows:,} transaction rows in {result.seconds:.2f} s = "
            f"{report['transaction_rows_per_s']:,} rows/s ({report['all_rows_per_s']:,} rows/s counting all "
            f"inserts/updates/deletes), {result.db_transactions} db transactions, batch {args.batch_size}"
        )
        print(f"inserted {result.inserted}, updated {result.updated}, deleted {result.deleted}")
        print(
            f"CPU: python {python_cpu:.1f} s (all threads), {len(backend.pids)} postgres backend(s) "
            f"{backend.seconds:.1f} s; on 2 idle cores about {report['rows_per_s_on_idle_2_cores_estimate']:,} "
            f"rows/s (load average here {report['load_average_1m']})"
        )
        print(
            f"peak RSS {report['peak_rss_mb_python']} MB (python), database {size}, "
            f"postgres startup {startup:.2f} s, unreconciled accounts: {'not checked' if bad is None else bad}"
        )
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
