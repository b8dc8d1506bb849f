"""The same small delta transformed on top of 0, 1M and 5M transactions of history, and dbt's fixed cost per cycle.

    .venv/bin/python benchmarks/bench_transform_scaling.py --sizes 0,1000000,5000000 [--git HEAD]

(`--git HEAD`: banking_dbt as committed, exported into the temp dir, instead of the work tree being edited.)

Per history size, in a temp state dir, with pipelines/banking.yaml (local) and banking_dbt:
1. the history is written straight into DuckDB's raw tables in SQL (going through CDC would take too long): a
   snapshot of 10,000 customers (50 of them without accounts) and 20,000 accounts, then N deposit transactions,
   each a source transaction with its `transactions` insert and its `accounts` update (the new balance), so
   raw holds 2N + 30,050 change events; each million rows is one "file" with its ledger row (load_seq, raw_file),
   as bankflow's load writes them;
2. the transform builds every model once (untimed) through a `Transformer`, as `bankflow run` keeps it;
3. deltas 1 … `--deltas` (5; 275 changes each: 100 deposits and their account updates, 50 customer updates, 10
   new customers with an account, 5 customer deletes; other keys each time) are loaded the same way and each
   transformed by that Transformer, told which raw tables changed: "delta s" is their median, and the fastest
   is printed too (on a shared machine noise only adds time);
4. fixed cost of a cycle with no new rows: the Transformer (nothing changed: dbt is skipped), the Transformer
   with everything selected (manifest reused: dbt's floor), and "before": the spec's steps each with a fresh
   dbtRunner (partial parsing, no manifest reuse, everything selected), as the transform stage ran until now;
5. one more delta (the same kind of changes, other keys) transformed the old way: "delta before s".
Before the first size, a warm-up (a tiny history, built and given a delta) loads dbt and DuckDB, so the first
size's figures are not the import's.

The machine may be shared: the load average is printed with the figures. BENCH_KEEP=1 keeps the temp dir.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bankflow.spec.loader import ResolvedSpec, load_spec  # noqa: E402
from bankflow.stages.base import Progress, RunContext  # noqa: E402
from bankflow.stages.transform import Transformer, dbt_args, write_profile  # noqa: E402
from tests.fixtures.raw_banking import COLUMNS, META_COLUMNS, TABLES  # noqa: E402

CUSTOMERS = 10_000
PROSPECTS = 50  # customers without accounts (ids above CUSTOMERS): the deltas delete some
ACCOUNTS = 20_000
FILE_ROWS = 1_000_000
T0 = "TIMESTAMPTZ '2024-01-01 00:00:00.000001+00'"
LEDGER = "_bankflow_loaded_files"


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------- raw, written in SQL

class Raw:
    """The raw change log and its ledger, in a DuckDB file; positions (LSN, tx id, load_seq) keep growing."""

    def __init__(self, path: Path) -> None:
        import duckdb

        self.path = path
        self.con = duckdb.connect(str(path))
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("create schema if not exists raw")
        for table in TABLES:
            cols = ", ".join(f'"{n}" {t}' for n, t in COLUMNS[table] + META_COLUMNS)
            self.con.execute(f"create table if not exists raw.{table} ({cols})")
        self.con.execute(f"create table if not exists raw.{LEDGER} (file_key VARCHAR PRIMARY KEY, raw_table "
                         "VARCHAR NOT NULL, rows BIGINT NOT NULL, loaded_at TIMESTAMPTZ NOT NULL DEFAULT "
                         "current_timestamp, load_seq BIGINT, raw_file VARCHAR)")
        self.files = int(self.con.execute(f"select count(*) from raw.{LEDGER}").fetchone()[0])

    def close(self) -> None:
        self.con.close()

    def insert(self, table: str, select_sql: str) -> int:
        """Append a SELECT's rows (the table's columns but `_file`, in order) as one lake file, with its ledger
        row."""
        self.files += 1
        key = f"banking/public.{table}/bench-{self.files:05d}.parquet"
        url = f"file:///lake/{key}"
        names = [n for n, _ in COLUMNS[table] + META_COLUMNS if n != "_file"]
        self.con.execute("begin transaction")
        before = self.con.execute(f"select count(*) from raw.{table}").fetchone()[0]
        self.con.execute(f"insert into raw.{table} ({', '.join(names)}, _file) "
                         f"select *, ? from ({select_sql})", [url])
        rows = self.con.execute(f"select count(*) from raw.{table}").fetchone()[0] - before
        self.con.execute(f"insert into raw.{LEDGER} (file_key, raw_table, rows, load_seq, raw_file) "
                         f"select ?, ?, ?, coalesce(max(load_seq), 0) + 1, ? from raw.{LEDGER}",
                         [key, table, rows, url])
        self.con.execute("commit")
        return int(rows)

    def history(self, transactions: int) -> None:
        """The snapshot, then `transactions` deposits (transaction insert + account update each)."""
        self.insert("customers", f"""
            select id, 'F' || id as first_name, 'L' || (id % 97) as last_name, 'c' || id || '@example.com' as email,
                   {T0} - interval 30 day as created_at, {T0} - interval 30 day as updated_at,
                   'r' as _op, 1000 as _lsn, 900 as _tx_id, {T0} as _source_ts
            from range(1, {CUSTOMERS + PROSPECTS + 1}) t(id)""")
        self.insert("accounts", f"""
            select id, 1 + (id - 1) % {CUSTOMERS} as customer_id,
                   ['CHECKING', 'SAVINGS', 'CREDIT'][1 + id % 3] as account_type,
                   ['EUR', 'USD', 'GBP'][1 + id % 3] as currency,
                   cast((id % 1000) * 10 + 0.5 as decimal(18,2)) as opening_balance,
                   cast((id % 1000) * 10 + 0.5 as decimal(18,2)) as balance, 'OPEN' as status,
                   {T0} - interval 30 day as created_at, {T0} - interval 30 day as updated_at,
                   cast(null as timestamptz) as closed_at,
                   'r' as _op, 1000 as _lsn, 900 as _tx_id, {T0} as _source_ts
            from range(1, {ACCOUNTS + 1}) t(id)""")
        for start in range(1, transactions + 1, FILE_ROWS):
            stop = min(start + FILE_ROWS, transactions + 1)
            deposits = f"""
                select i, 1 + (i * 7919) % {ACCOUNTS} as account_id,
                       cast(((i * 31) % 9000 + 100) * 0.01 as decimal(18,2)) as amount,
                       {T0} + to_microseconds(i * 1000) as ts
                from range({start}, {stop}) t(i)"""
            self.insert("transactions", f"""
                select i as id, account_id, 'DEPOSIT' as txn_type, amount,
                       cast(null as bigint) as related_account_id, 'COMPLETED' as status, ts as created_at,
                       'c' as _op, 1000000 + i * 200 as _lsn, 1000 + i as _tx_id, ts + interval 40 microsecond
                       as _source_ts
                from ({deposits})""")
            # each deposit's account update: the balance after it (opening + every deposit so far)
            self.insert("accounts", f"""
                with d as ({deposits}),
                     before as (select account_id, sum(amount) as done from (
                        select 1 + (i * 7919) % {ACCOUNTS} as account_id,
                               cast(((i * 31) % 9000 + 100) * 0.01 as decimal(18,2)) as amount
                        from range(1, {start}) t(i)) group by account_id)
                select d.account_id as id, 1 + (d.account_id - 1) % {CUSTOMERS} as customer_id,
                       ['CHECKING', 'SAVINGS', 'CREDIT'][1 + d.account_id % 3] as account_type,
                       ['EUR', 'USD', 'GBP'][1 + d.account_id % 3] as currency,
                       cast((d.account_id % 1000) * 10 + 0.5 as decimal(18,2)) as opening_balance,
                       cast((d.account_id % 1000) * 10 + 0.5 + coalesce(b.done, 0)
                            + sum(d.amount) over (partition by d.account_id order by d.i) as decimal(18,2))
                           as balance,
                       'OPEN' as status, {T0} - interval 30 day as created_at, d.ts as updated_at,
                       cast(null as timestamptz) as closed_at,
                       'u' as _op, 1000000 + d.i * 200 + 100 as _lsn, 1000 + d.i as _tx_id,
                       d.ts + interval 40 microsecond as _source_ts
                from d left join before b using (account_id)""")
        self.con.execute("checkpoint")

    def delta(self, number: int) -> set[str]:
        """275 changes past everything in raw (number 1, 2, …: other keys each time); the tables that changed."""
        lsn, tx, txn_id, ts = self.con.execute("""
            select (select max(_lsn) from raw.accounts) + 1000, (select max(_tx_id) from raw.accounts) + 10,
                   (select coalesce(max(id), 0) from raw.transactions),
                   (select max(_source_ts) from raw.accounts)""").fetchone()
        ts_sql = f"TIMESTAMPTZ '{ts.isoformat()}'"
        offset = number * 1000
        # 100 deposits on 100 distinct accounts, each with its account update (current balance + amount)
        deposits = f"""
            select k, 1 + ((k + {offset}) * 197) % {ACCOUNTS} as account_id,
                   cast((k * 37 % 5000 + 100) * 0.01 as decimal(18,2)) as amount,
                   {ts_sql} + to_microseconds(k * 1000) as ts
            from range(1, 101) t(k)"""
        self.insert("transactions", f"""
            select {txn_id} + k as id, account_id, 'DEPOSIT', amount, cast(null as bigint), 'COMPLETED', ts,
                   'c', {lsn} + k * 200, {tx} + k, ts + interval 40 microsecond
            from ({deposits})""")
        latest = """(select * from raw.accounts qualify row_number() over (partition by id order by _lsn desc) = 1)"""
        self.insert("accounts", f"""
            select a.id, a.customer_id, a.account_type, a.currency, a.opening_balance,
                   cast(a.balance + d.amount as decimal(18,2)), a.status, a.created_at, d.ts, a.closed_at,
                   'u', {lsn} + d.k * 200 + 100, {tx} + d.k, d.ts + interval 40 microsecond
            from ({deposits}) d join {latest} a on a.id = d.account_id""")
        # 50 customer updates, 10 new customers with an account each, 5 deletes of customers without accounts
        base = lsn + 100_000
        self.insert("customers", f"""
            select id, first_name, last_name, 'changed.' || id || '.{number}@example.net', created_at,
                   {ts_sql} + interval 1 second, 'u', {base} + k, {tx} + 200 + k, {ts_sql} + interval 1 second
            from (select k, 1 + ((k + {offset}) * 131) % {CUSTOMERS} as cid from range(1, 51) t(k)) u
            join (select * from raw.customers qualify row_number() over (partition by id order by _lsn desc) = 1) c
              on c.id = u.cid""")
        new_customers = f"select k, {CUSTOMERS + PROSPECTS} + {offset} + k as cid, {ACCOUNTS} + {offset} + k " \
                        f"as aid from range(1, 11) t(k)"
        self.insert("customers", f"""
            select cid, 'New', 'Customer', 'new.' || cid || '@example.com', {ts_sql} + interval 2 second,
                   {ts_sql} + interval 2 second, 'c', {base} + 1000 + k * 2, {tx} + 300 + k,
                   {ts_sql} + interval 2 second
            from ({new_customers})""")
        self.insert("accounts", f"""
            select aid, cid, 'CHECKING', 'EUR', 100.00, 100.00, 'OPEN', {ts_sql} + interval 2 second,
                   {ts_sql} + interval 2 second, cast(null as timestamptz), 'c', {base} + 1001 + k * 2,
                   {tx} + 300 + k, {ts_sql} + interval 2 second
            from ({new_customers})""")
        first_prospect = CUSTOMERS + (number - 1) * 5
        self.insert("customers", f"""
            select id, first_name, last_name, email, created_at, updated_at, 'd', {base} + 5000 + id % 100,
                   {tx} + 400 + id % 100, {ts_sql} + interval 3 second
            from raw.customers where id > {first_prospect} and id <= {first_prospect + 5} and _op = 'r'""")
        return {"transactions", "accounts", "customers"}


# ---------------------------------------------------------------- the transform, before and after

def old_style_cycle(resolved: ResolvedSpec) -> tuple[float, float]:
    """The spec's steps as the transform stage ran them until now: a dbtRunner per step, no manifest reused,
    everything selected (partial parsing on each invocation)."""
    from dbt.cli.main import dbtRunner

    transform = resolved.spec.transform
    assert transform is not None
    write_profile(resolved)
    started, cpu = time.monotonic(), time.process_time()
    for step in transform.steps:
        outcome = dbtRunner().invoke([*dbt_args(resolved, step.command, step.select), "--quiet"])
        if not outcome.success:
            raise SystemExit(f"dbt {step.label} failed (old style): {outcome.exception}")
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    resolved.spec.warehouse.release_dbt()
    return seconds, cpu


def timed(transformer: Transformer, ctx: RunContext, changed: set[str] | None) -> tuple[float, float, dict[str, Any]]:
    """Wall seconds, CPU seconds of this process (every thread: dbt's and DuckDB's) and the result's details.
    On a shared machine the CPU time moves less than the wall time when others load it."""
    started, cpu = time.monotonic(), time.process_time()
    result = transformer.run(ctx, changed)
    return time.monotonic() - started, time.process_time() - cpu, result.details


def spec_file(root: Path, revision: str | None) -> Path:
    """pipelines/banking.yaml, pointing at banking_dbt as it is in the work tree, or as committed in `revision`
    (exported into `root`: the figures are then those of committed code, whatever is being edited)."""
    spec = REPO / "pipelines" / "banking.yaml"
    if revision is None:
        return spec
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "banking_dbt"], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    text = spec.read_text(encoding="utf-8")
    text = text.replace("project_dir: ../banking_dbt\n", f"project_dir: {json.dumps(str(root / 'banking_dbt'))}\n")
    text = text.replace("workload: workloads/banking.py",
                        f"workload: {json.dumps(str(REPO / 'pipelines' / 'workloads' / 'banking.py'))}")
    copy = root / "banking.yaml"
    copy.write_text(text, encoding="utf-8")
    return copy


def bench_size(size: int, root: Path, repeat: int, spec: Path, delta_count: int = 5) -> dict[str, Any]:
    """One history size's figures (size -1: a warm-up on 1,000 transactions)."""
    state = root / f"history-{size}"
    resolved = load_spec(spec, env="local", environ={"BANKFLOW_STATE_DIR": str(state)})
    state.mkdir(parents=True, exist_ok=True)
    raw = Raw(resolved.resolve_path(resolved.spec.warehouse.path))
    started = time.monotonic()
    raw.history(max(size, 0) if size >= 0 else 1_000)
    raw_rows = sum(raw.con.execute(f"select count(*) from raw.{t}").fetchone()[0] for t in TABLES)
    raw.close()
    out: dict[str, Any] = {"history": size, "raw_rows": raw_rows, "write_s": time.monotonic() - started}
    print(f"[{size:,}] raw: {raw_rows:,} change events written in {out['write_s']:.1f} s", flush=True)

    transformer = Transformer(resolved)
    ctx = RunContext(resolved, Progress(False))
    try:
        build_s, _, _ = timed(transformer, ctx, None)
        out["build_s"] = build_s
        print(f"[{size:,}] first build (every model, untimed in the table): {build_s:.1f} s", flush=True)

        deltas, cpus = [], []
        for number in range(1, delta_count + 1):  # deltas of one shape (other keys): the median is the figure
            raw = Raw(raw.path)
            changed = raw.delta(number)
            raw.close()
            seconds, cpu, details = timed(transformer, ctx, changed)
            deltas.append(seconds)
            cpus.append(cpu)
            print(f"[{size:,}] delta {number} (Transformer): {seconds:.2f} s, CPU {cpu:.2f} s "
                  f"{ {s['step']: s['seconds'] for s in details['steps']} }", flush=True)
        out["delta_s"], out["delta_cpu_s"] = statistics.median(deltas), statistics.median(cpus)
        out["delta_min_s"] = min(deltas)
        out["delta_steps"] = {s["step"]: s["seconds"] for s in details["steps"]}
        idle = [timed(transformer, ctx, set())[0] for _ in range(repeat)]
        forced = [timed(transformer, ctx, None)[0] for _ in range(repeat)]
    finally:
        transformer.close()
    before = [old_style_cycle(resolved)[0] for _ in range(repeat)]
    out.update(idle_after_s=statistics.median(idle), idle_forced_s=statistics.median(forced),
               idle_before_s=statistics.median(before))
    print(f"[{size:,}] no new rows: Transformer {out['idle_after_s']:.3f} s (skipped), everything selected "
          f"{out['idle_forced_s']:.2f} s, before {out['idle_before_s']:.2f} s", flush=True)

    raw = Raw(raw.path)
    raw.delta(delta_count + 1)
    raw.close()
    out["delta_before_s"], out["delta_before_cpu_s"] = old_style_cycle(resolved)
    print(f"[{size:,}] delta {delta_count + 1} (before: fresh dbtRunner per step): {out['delta_before_s']:.2f} s, "
          f"CPU {out['delta_before_cpu_s']:.2f} s", flush=True)
    shutil.rmtree(state / "lake", ignore_errors=True)
    return out


def print_table(results: list[dict[str, Any]]) -> None:
    empty = next((r for r in results if r["history"] == 0), results[0])
    print(f"\ntransform of the same 275-change delta on top of a history (load average {load_avg()})")
    print(f"{'':32s} | {'delta (Transformer)':^31s} | {'delta before':^13s} | {'no-new-rows cycle, wall s':^30s}")
    print(f"{'history txns':>12s} {'raw rows':>11s} {'build s':>7s} | {'wall s':>6s} {'x empty':>7s} "
          f"{'CPU s':>6s} {'x empty':>7s} | {'wall':>5s} {'CPU':>6s} | {'after':>6s} {'all selected':>12s} "
          f"{'before':>8s}")
    for r in results:
        ratio = r["delta_s"] / empty["delta_s"] if empty["delta_s"] else float("nan")
        cpu_ratio = r["delta_cpu_s"] / empty["delta_cpu_s"] if empty["delta_cpu_s"] else float("nan")
        print(f"{r['history']:>12,} {r['raw_rows']:>11,} {r['build_s']:>7.1f} | {r['delta_s']:>6.2f} "
              f"{ratio:>6.2f}x {r['delta_cpu_s']:>6.2f} {cpu_ratio:>6.2f}x | {r['delta_before_s']:>5.2f} "
              f"{r['delta_before_cpu_s']:>6.2f} | {r['idle_after_s']:>6.3f} {r['idle_forced_s']:>12.2f} "
              f"{r['idle_before_s']:>8.2f}")
    for r in results:
        least = r["delta_min_s"] / empty["delta_min_s"] if empty["delta_min_s"] else float("nan")
        print(f"  {r['history']:,}: fastest delta {r['delta_min_s']:.2f} s ({least:.2f}x empty's fastest); "
              f"delta steps {r['delta_steps']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default="0,1000000,5000000", help="history sizes (transactions), comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="cycles per fixed-cost figure (median)")
    parser.add_argument("--deltas", type=int, default=5, choices=range(1, 10),
                        help="deltas per history size (median and fastest printed)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--git", metavar="REV", default=None,
                        help="benchmark banking_dbt as committed in REV (e.g. HEAD), not the work tree")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    root = Path(tempfile.mkdtemp(prefix="bench-transform-"))
    started = time.monotonic()
    results = []
    try:
        spec = spec_file(root, args.git)
        print(f"dbt project: {spec.parent if args.git else REPO} banking_dbt"
              f"{f' (as committed in {args.git})' if args.git else ''}", flush=True)
        print("warm-up (not in the table):", flush=True)
        bench_size(-1, root, 1, spec, 2)
        for size in sizes:
            results.append(bench_size(size, root, args.repeat, spec, args.deltas))
    finally:
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    print(f"total {time.monotonic() - started:.0f} s")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
