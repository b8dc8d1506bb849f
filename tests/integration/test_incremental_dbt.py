"""banking_dbt incremental on raw's commit position equals a full refresh, whatever order the changes arrive in.

A generated change log (tests/fixtures/raw_banking.py: updates, deletes, re-snapshots, a primary-key change) is
loaded into raw in several load batches, each with its ledger row and `load_seq` as bankflow's load writes them:
- a batch whose change LSNs are LOWER than the previous batch's: transactions that began first and committed
  last (overlapping transactions), which a high-water mark on `_lsn` loses for good;
- a lake file loaded twice under another key (the same events re-delivered).
After every batch the four bankflow steps run incrementally (run staging+history, snapshot, run marts, test). The
warehouse is then copied and `dbt run --full-refresh` rebuilds every model from all of raw: every model's rows are
identical to the incremental ones (bookkeeping columns aside), and the marts match the generator's ground truth.
The same batches through the old `_lsn > max(_lsn)` fact lose the overlapping legs (the test can fail).
"""

from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import raw_banking

pytestmark = pytest.mark.integration

duckdb = pytest.importorskip("duckdb")
dbt_main = pytest.importorskip("dbt.cli.main")
pytest.importorskip("dbt.adapters.duckdb")

REPO = Path(__file__).resolve().parents[2]
PROJECT_DIR = REPO / "banking_dbt"
SCHEMA = "analytics"
STEPS: list[list[str]] = [["run", "--select", "staging", "history"], ["snapshot"], ["run", "--select", "marts"],
                          ["test"]]
MODELS = ("stg_customers", "stg_accounts", "stg_transactions", "customer_history", "account_history",
          "customers_snapshot", "accounts_snapshot", "dim_customers", "dim_accounts", "fact_transactions",
          "account_balances")
# The fact as it was before: a high-water mark on the change's own LSN.
OLD_FACT = """{{ config(materialized='incremental', unique_key='id') }}
select id, account_id, related_account_id, txn_type, amount, status, created_at, is_deleted, _lsn, _source_ts
from {{ ref('stg_transactions') }}
{% if is_incremental() %}
where _lsn > (select coalesce(max(_lsn), -1) from {{ this }})
{% endif %}
"""


def _failures(res: Any) -> dict[str, str]:
    if res.result is None or not hasattr(res.result, "results"):
        return {"<no results>": str(res.exception)}
    return {r.node.name: f"{r.status}: {r.message}" for r in res.result.results
            if str(r.status) not in ("success", "pass")}


class Warehouse:
    """A DuckDB warehouse whose raw tables and ledger are written like bankflow's load stage writes them."""

    def __init__(self, root: Path, project: Path = PROJECT_DIR) -> None:
        self.root, self.project = root, project
        self.database = root / "warehouse.duckdb"
        self.profiles = root / "profiles"
        self.profiles.mkdir(parents=True)
        (self.profiles / "profiles.yml").write_text(
            "bankflow:\n  target: local\n  outputs:\n    local:\n      type: duckdb\n"
            f"      path: '{self.database.as_posix()}'\n      schema: {SCHEMA}\n      threads: 1\n")
        self.files = 0

    def dbt(self, args: list[str]) -> Any:
        res = dbt_main.dbtRunner().invoke([
            *args, "--project-dir", str(self.project), "--profiles-dir", str(self.profiles),
            "--target-path", str(self.root / "target"), "--log-path", str(self.root / "logs")])
        assert res.success and not _failures(res), f"dbt {args}: {res.exception or _failures(res)}"
        return res

    def steps(self, steps: list[list[str]] = STEPS) -> None:
        for args in steps:
            self.dbt(args)

    def load(self, events: dict[str, list[dict[str, Any]]]) -> None:
        """One load chunk: every table's events as one lake file, rows and ledger rows in one transaction, the
        chunk's load_seq = max + 1 (bankflow.warehouses.duckdb.adapter)."""
        con = duckdb.connect(str(self.database))
        try:
            con.execute("begin transaction")
            con.execute("create schema if not exists raw")
            con.execute(raw_banking.LEDGER_DDL.format(schema="raw"))
            seq = con.execute("select coalesce(max(load_seq), 0) + 1 from raw._bankflow_loaded_files").fetchone()
            for table in raw_banking.TABLES:
                cols = raw_banking.COLUMNS[table] + raw_banking.META_COLUMNS
                con.execute(f"create table if not exists raw.{table} ("
                            + ", ".join(f"{n} {t}" for n, t in cols) + ")")
                if not events.get(table):
                    continue
                self.files += 1
                key = f"{table}/date=2024-06-01/stream-{self.files:06d}.parquet"
                raw_file = f"/lake/{key}"  # the writer stamps rows with its root + key
                names = [n for n, _ in cols]
                con.executemany(f"insert into raw.{table} ({', '.join(names)}) values ({', '.join('?' * len(names))})",
                                [[{**e, "_file": raw_file}[n] for n in names] for e in events[table]])
                con.execute("insert into raw._bankflow_loaded_files (file_key, raw_table, rows, load_seq, raw_file) "
                            "values (?, ?, ?, ?, ?)", [key, table, len(events[table]), seq[0] if seq else 1,
                                                       raw_file])
            con.execute("commit")
        finally:
            con.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(self.database))
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def rows(self, model: str) -> list[tuple[Any, ...]]:
        """Every row of a model, bookkeeping columns (`_bankflow_*`) aside, sorted."""
        columns = [c for (c,) in self.query(
            "select column_name from information_schema.columns "
            f"where table_schema = '{SCHEMA}' and table_name = '{model}' order by ordinal_position")
            if not c.startswith("_bankflow_")]
        assert columns, model
        return sorted(self.query(f"select {', '.join(columns)} from {SCHEMA}.{model}"), key=repr)

    def copy(self, root: Path) -> Warehouse:
        """The same warehouse in another file (checkpointed first, so the copy holds every committed row)."""
        con = duckdb.connect(str(self.database))
        con.execute("checkpoint")
        con.close()
        other = Warehouse(root, self.project)
        shutil.copy(self.database, other.database)
        return other


def take(log: raw_banking.RawBankingLog) -> dict[str, list[dict[str, Any]]]:
    """The generator's pending events (and mark them written, for its ground truth)."""
    events = {t: list(log.pending[t]) for t in raw_banking.TABLES}
    for table in raw_banking.TABLES:
        log.written[table].extend(log.pending[table])
        log.pending[table] = []
    return events


def overlapping(log: raw_banking.RawBankingLog) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[Any]]]:
    """Deposits on two disjoint sets of accounts: the first set's transactions begin first (lower LSNs) but commit
    after the second's. Returns (early-LSN events, late-LSN events); the late ones are loaded first."""
    accounts = log.open_accounts()
    slow, fast = accounts[: len(accounts) // 2], accounts[len(accounts) // 2:]
    for aid in slow:
        with log.transaction():
            log.deposit(aid)
    early = take(log)
    for aid in fast:
        with log.transaction():
            log.deposit(aid)
    late = take(log)
    return early, late


def key_change(log: raw_banking.RawBankingLog) -> tuple[int, int]:
    """`update customers set id = …` of a customer without accounts: a delete of the old key and a create of the
    new one in one transaction (how both engines deliver it)."""
    old = log.customers_without_accounts()[0]
    new = log._new_id("customers")
    with log.transaction():
        row = dict(log.rows["customers"][old])
        log._change("customers", "d", row)
        log._change("customers", "c", {**row, "id": new})
    return old, new


def batches(log: raw_banking.RawBankingLog) -> list[tuple[str, dict[str, list[dict[str, Any]]]]]:
    """The load batches, in load order."""
    raw_banking.build_initial(log)
    out = [("initial", take(log))]
    changes = raw_banking.build_more(log)
    more = take(log)
    out.append(("updates, a delete, new legs", more))
    early, late = overlapping(log)
    out.append(("late commits with higher LSNs", late))
    out.append(("early LSNs committed last", early))
    out.append(("a file loaded again under another key", {"transactions": more["transactions"][:5],
                                                         "accounts": more["accounts"][:3]}))
    key_change(log)
    log.random_activity(12)
    with log.transaction():
        log.delete_customer(log.customers_without_accounts()[0])
    out.append(("a key change, a delete, more activity", take(log)))
    assert changes["new_transactions"]
    return out


def assert_ground_truth(wh: Warehouse, log: raw_banking.RawBankingLog) -> None:
    facts = {i: (a, amount) for i, a, amount, deleted in wh.query(
        f"select id, account_id, amount, is_deleted from {SCHEMA}.fact_transactions") if not deleted}
    assert facts == {t: (r["account_id"], r["amount"]) for t, r in log.rows["transactions"].items()}
    balances = dict(wh.query(f"select account_id, computed_balance from {SCHEMA}.account_balances"))
    assert balances == log.balances()
    assert all(isinstance(v, Decimal) for v in balances.values())
    for model, table in (("customer_history", "customers"), ("account_history", "accounts")):
        got = {}
        for key, valid_from, op in wh.query(f"select id, valid_from, _op from {SCHEMA}.{model} "
                                            "order by id, version_number"):
            got.setdefault(key, []).append((valid_from, op))
        assert got == {k: [(v.source_ts, v.op) for v in vs] for k, vs in log.versions[table].items()}, model
    live = {k for k, vs in log.versions["customers"].items() if vs[-1].op != "d"}
    assert {k for (k,) in wh.query(f"select customer_id from {SCHEMA}.dim_customers "
                                   "where is_current and not is_deleted")} == live


@pytest.fixture(scope="module")
def incremental(tmp_path_factory: pytest.TempPathFactory) -> tuple[Warehouse, raw_banking.RawBankingLog]:
    log = raw_banking.RawBankingLog(seed=424242)
    wh = Warehouse(tmp_path_factory.mktemp("incremental"))
    loaded = batches(log)
    for _name, events in loaded:
        wh.load(events)
        wh.steps()
    return wh, log


def test_incremental_runs_equal_a_full_refresh(incremental: tuple[Warehouse, raw_banking.RawBankingLog],
                                              tmp_path: Path) -> None:
    wh, log = incremental
    # the ledger numbered the six loads in order; the overlapping batch has lower LSNs than the one before it
    seqs = wh.query("select raw_table, load_seq from raw._bankflow_loaded_files order by load_seq, raw_table")
    assert sorted({s for _, s in seqs}) == [1, 2, 3, 4, 5, 6]
    (late_max,), (early_max,) = (wh.query(
        "select max(t._lsn) from raw.transactions t join raw._bankflow_loaded_files l on l.raw_file = t._file "
        f"where l.load_seq = {seq}")[0] for seq in (3, 4))
    assert early_max < late_max
    # incremental runs happened: the fact's rows carry different positions
    assert len(wh.query(f"select distinct _bankflow_load_seq from {SCHEMA}.fact_transactions")) > 3
    # duplicates of re-delivered events count once
    assert wh.query("select count(*) from raw.transactions")[0][0] > len(log.rows["transactions"])
    assert_ground_truth(wh, log)

    full = wh.copy(tmp_path / "full")
    full.dbt(["run", "--full-refresh", "--select", "staging", "history"])
    full.dbt(["run", "--full-refresh", "--select", "marts"])
    full.dbt(["test"])
    for model in MODELS:
        assert wh.rows(model) == full.rows(model), f"{model}: incremental rows differ from --full-refresh"
    assert_ground_truth(full, log)


def test_incremental_run_reads_only_the_delta(incremental: tuple[Warehouse, raw_banking.RawBankingLog]) -> None:
    """A run with nothing new loaded writes nothing; its compiled SQL filters on the load sequence, not _lsn."""
    wh, _ = incremental
    before = {m: wh.rows(m) for m in MODELS}
    marks = wh.query(f"select max(_bankflow_load_seq) from {SCHEMA}.stg_transactions")
    res = wh.dbt(["run", "--select", "stg_transactions", "fact_transactions", "customer_history"])
    compiled = {r.node.name: r.node.compiled_code for r in res.result.results}
    assert "load_seq > 6" in compiled["stg_transactions"] and "_lsn >" not in compiled["stg_transactions"]
    assert "_bankflow_load_seq > 6" in compiled["fact_transactions"]
    assert {m: wh.rows(m) for m in MODELS} == before
    assert wh.query(f"select max(_bankflow_load_seq) from {SCHEMA}.stg_transactions") == marks


def test_the_old_lsn_mark_loses_overlapping_transactions(tmp_path: Path) -> None:
    """The same batches through a fact with `_lsn > max(_lsn)`: the legs that committed last with lower LSNs never
    reach the mart (what this test suite would catch), while the load-sequence fact has every one."""
    project = tmp_path / "banking_dbt"
    shutil.copytree(PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    (project / "models" / "marts" / "fact_transactions.sql").write_text(OLD_FACT, encoding="utf-8")
    wh = Warehouse(tmp_path / "wh", project)
    log = raw_banking.RawBankingLog(seed=424242)
    loaded = batches(log)[:4]
    assert loaded[3][0] == "early LSNs committed last"
    for _name, events in loaded:
        wh.load(events)
        wh.steps([["run", "--select", "staging", "fact_transactions"]])
    got = {i for (i,) in wh.query(f"select id from {SCHEMA}.fact_transactions")}
    in_raw = {i for (i,) in wh.query("select id from raw.transactions")}  # raw is exact
    early = {e["id"] for e in loaded[3][1]["transactions"]}
    assert in_raw - got == early, "the _lsn mark lost exactly the legs that committed last with lower LSNs"


def test_late_events_renumber_and_shrink_a_key_exactly(tmp_path: Path) -> None:
    """History recomputes a key from shortly before its new events: a late snapshot read between two identical
    updates makes both no version (rule 3), so the key has FEWER versions than before (the kept extra row is
    deleted through its tombstone); a key with a long history is renumbered from its cut. Same rows as a full
    refresh."""
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2024, 6, 1, 9, 0, 0, 1, tzinfo=timezone.utc)

    def event(key: int, op: str, lsn: int, name: str) -> dict[str, Any]:
        ts = t0 + timedelta(seconds=lsn)
        return {"id": key, "first_name": name, "last_name": "L", "email": f"{key}@x.org", "created_at": t0,
                "updated_at": t0, "_op": op, "_lsn": lsn, "_tx_id": lsn, "_source_ts": ts}

    wh = Warehouse(tmp_path / "wh")
    long_key = [event(2, "c", 10, "v0")] + [event(2, "u", 20 + i, f"v{i + 1}") for i in range(6)]
    wh.load({"customers": [event(1, "c", 100, "a"), event(1, "u", 200, "b"), event(1, "u", 400, "b"), *long_key]})
    step = [["run", "--select", "staging", "history"]]
    wh.steps(step)
    assert wh.query(f"select count(*) from {SCHEMA}.customer_history where id = 1") == [(3,)]
    wh.load({"customers": [event(1, "r", 300, "b"), event(2, "u", 500, "v7")]})
    wh.steps(step)
    assert wh.query(f"select version_number, first_name, is_current from {SCHEMA}.customer_history "
                    "where id = 1 order by 1") == [(1, "a", False), (2, "b", True)]
    assert wh.query(f"select max(version_number), count(*) from {SCHEMA}.customer_history where id = 2") == [(8, 8)]
    assert wh.query(f"select count(*) from {SCHEMA}.customer_history where _bankflow_tombstone") == [(0,)]
    full = wh.copy(tmp_path / "full")
    full.dbt(["run", "--full-refresh", "--select", "staging", "history"])
    for model in ("stg_customers", "customer_history"):
        assert wh.rows(model) == full.rows(model), model
