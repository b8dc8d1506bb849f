"""banking_dbt's tests on a cycle narrowed to what changed (var bankflow_tests=changed) check what that cycle's
builds wrote, and catch every violation a change in it could introduce; a full run still checks every row.

The warehouse is built as in test_incremental_dbt.py (raw loaded like bankflow's load stage, then the four steps):
an initial load, then a later one, whose builds are "the latest". Then two states are made from it:
- NEW: violations written as if by the latest builds: rows they wrote are broken (a null, a value out of the
  accepted ones, a duplicate key, an orphan, a bad amount, two current versions, a bad range, a balance that does
  not reconcile, a dimension or history that disagrees with staging), and parents they rewrote break rows they did
  not write: an account and a customer flagged deleted under older legs and accounts, one leg of an older
  transfer rewritten as deleted (its partner loses its pair);
- NEW + OLD: the same, plus violations of each kind in rows, keys and transactions no latest build touched.
For every test the narrowed check returns exactly what the full check returns on NEW (it catches every new
violation, through either side, and ignores the old ones), and the full check on NEW + OLD catches the old ones
too. Tests on sources and snapshots (no mark column) compile the same either way: they keep checking all rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import raw_banking
from tests.integration.test_incremental_dbt import SCHEMA, Warehouse, take

pytestmark = pytest.mark.integration

duckdb = pytest.importorskip("duckdb")
dbt_main = pytest.importorskip("dbt.cli.main")
pytest.importorskip("dbt.adapters.duckdb")

A = SCHEMA
CHANGED = ["--vars", '{"bankflow_tests": "changed"}']
# every test that reads a model with a mark column: each gets a new and an old violation below
NARROWED = (
    "bankflow_not_null_fact_transactions_amount", "bankflow_accepted_values_fact_transactions_status",
    "bankflow_unique_fact_transactions_id", "active_relationship_fact_transactions_account_id",
    "active_relationship_stg_transactions_account_id", "active_relationship_stg_accounts_customer_id",
    "active_relationship_dim_accounts_customer_id", "bankflow_unique_account_history_id__version_number",
    "bankflow_unique_account_history_id___lsn", "exactly_one_current_account_history_id",
    "valid_range_account_history_valid_from", "bankflow_unique_account_balances_account_id",
    "bankflow_not_null_account_balances_difference", "bankflow_not_null_stg_customers_email",
    "assert_balances_reconcile", "assert_no_negative_amounts", "assert_no_orphan_transactions",
    "assert_transfer_legs_pair", "assert_dims_current_match_staging", "assert_history_current_matches_staging",
)


def run_tests(wh: Warehouse, extra: list[str]) -> dict[str, tuple[str, str]]:
    """`dbt test` (failures allowed): per test node name, (status, compiled SQL)."""
    res = dbt_main.dbtRunner().invoke([
        "test", *extra, "--project-dir", str(wh.project), "--profiles-dir", str(wh.profiles),
        "--target-path", str(wh.root / "target"), "--log-path", str(wh.root / "logs")])
    assert res.result is not None and hasattr(res.result, "results"), res.exception
    return {r.node.name: (str(r.status), r.node.compiled_code) for r in res.result.results}


def by_prefix(results: dict[str, Any], prefix: str) -> Any:
    names = [n for n in results if n == prefix or n.startswith(prefix + "_")]
    assert len(names) == 1, (prefix, names)
    return results[names[0]]


def failing_rows(wh: Warehouse, sql: str) -> list[tuple[Any, ...]]:
    return sorted(wh.query(f"select * from ({sql}) as failures"), key=repr)


class State:
    """SQL on a warehouse copy, with the latest build's mark of each model at hand."""

    def __init__(self, wh: Warehouse) -> None:
        self.wh = wh

    def one(self, sql: str) -> Any:
        rows = self.wh.query(sql)
        assert rows and rows[0][0] is not None, sql
        return rows[0][0]

    def top(self, model: str, column: str = "_bankflow_load_seq") -> int:
        return int(self.one(f"select max({column}) from {A}.{model}"))

    def run(self, *statements: str) -> None:
        con = duckdb.connect(str(self.wh.database))
        try:
            for sql in statements:
                con.execute(sql)
        finally:
            con.close()


def latest_ids(s: State, model: str, key: str = "id") -> str:
    return f"(select {key} from {A}.{model} where _bankflow_load_seq = {s.top(model)})"


def break_new(s: State) -> None:
    """Violations in what the latest builds wrote, or in older rows through a parent those builds rewrote."""
    fact, stg_acc, stg_cus = s.top("fact_transactions"), s.top("stg_accounts"), s.top("stg_customers")
    new_legs = [i for (i,) in s.wh.query(
        f"select id from {A}.fact_transactions where _bankflow_load_seq = {fact} and not is_deleted "
        "and txn_type = 'DEPOSIT' order by id")]
    assert len(new_legs) >= 5, new_legs
    n1, n2, n3, n4, n5 = new_legs[:5]
    # an older account, not rewritten by the latest build, whose older legs stay: flagged deleted as if it were
    deleted_account = s.one(
        f"select a.id from {A}.stg_accounts a where a._bankflow_load_seq < {stg_acc} and not a.is_deleted "
        f"and a.id in (select account_id from {A}.fact_transactions where not is_deleted and txn_type = 'DEPOSIT') "
        f"and a.id not in (select account_id from {A}.fact_transactions where _bankflow_load_seq = {fact}) "
        f"and a.id not in (select coalesce(related_account_id, -1) from {A}.fact_transactions) order by a.id")
    # an older customer with older accounts: flagged deleted as if the latest build had rewritten it
    deleted_customer = s.one(
        f"select c.id from {A}.stg_customers c where c._bankflow_load_seq < {stg_cus} and not c.is_deleted "
        f"and c.id in (select customer_id from {A}.stg_accounts where not is_deleted and id <> {deleted_account}) "
        f"and c.id not in (select customer_id from {A}.stg_accounts where _bankflow_load_seq = {stg_acc}) "
        "order by c.id")
    # an older transfer whose legs the latest build did not write: one leg rewritten as deleted
    q_tx = s.one(
        f"select source_tx_id from {A}.fact_transactions where txn_type = 'TRANSFER_OUT' and not is_deleted "
        f"and _bankflow_load_seq < {fact} and source_tx_id not in "
        f"(select _tx_id from raw.transactions where id in {latest_ids(s, 'fact_transactions')}) "
        f"and account_id <> {deleted_account} and related_account_id <> {deleted_account} order by source_tx_id")
    touched_key = s.one(
        f"select h.id from {A}.account_history h where h._bankflow_load_seq = {s.top('account_history')} "
        "and not h.is_current and h.version_number > 1 group by h.id order by h.id")
    balances = [i for (i,) in s.wh.query(
        f"select account_id from {A}.account_balances where _bankflow_accounts_seq = "
        f"{s.top('account_balances', '_bankflow_accounts_seq')} and _bankflow_fact_seq = "
        f"{s.top('account_balances', '_bankflow_fact_seq')} order by account_id")]
    assert len(balances) >= 2, balances
    dim_customer = s.one(f"select customer_id from {A}.dim_customers where _bankflow_load_seq = "
                         f"{s.top('dim_customers')} and is_current and not is_deleted order by customer_id")
    stg_customer = s.one(f"select id from {A}.stg_customers where _bankflow_load_seq = {stg_cus} "
                         f"and not is_deleted and id <> {dim_customer} order by id")
    s.run(
        f"update {A}.fact_transactions set amount = null where id = {n1}",
        f"update {A}.fact_transactions set status = 'PENDING' where id = {n2}",
        f"insert into {A}.fact_transactions select * from {A}.fact_transactions where id = {n3}",
        f"update {A}.fact_transactions set account_id = 999992 where id = {n4}",
        f"update {A}.fact_transactions set signed_amount = -signed_amount where id = {n5}",
        f"update {A}.stg_accounts set is_deleted = true, _bankflow_load_seq = {stg_acc} where id = {deleted_account}",
        f"update {A}.stg_customers set is_deleted = true, _bankflow_load_seq = {stg_cus} "
        f"where id = {deleted_customer}",
        f"update {A}.fact_transactions set is_deleted = true, _bankflow_load_seq = {fact} "
        f"where source_tx_id = {q_tx} and txn_type = 'TRANSFER_OUT'",
        # the touched key's versions: a second current one (an older version: compared with ALL its rows), a
        # rewritten closed version with a range ending before it starts, a duplicate of a rewritten version
        f"update {A}.account_history set is_current = true, valid_to = null where id = {touched_key} "
        f"and version_number = 1",
        f"update {A}.account_history set valid_to = valid_from - interval 1 day where id = {touched_key} and "
        f"version_number = (select max(version_number) from {A}.account_history where id = {touched_key} "
        f"and not is_current and _bankflow_load_seq = {s.top('account_history')})",
        f"insert into {A}.account_history select * from {A}.account_history where id = {touched_key} "
        f"and version_number = (select max(version_number) from {A}.account_history where id = {touched_key})",
        f"update {A}.account_balances set difference = 1 where account_id = {balances[0]}",
        f"update {A}.account_balances set difference = null where account_id = {balances[1]}",
        f"insert into {A}.account_balances select * from {A}.account_balances where account_id = {balances[0]}",
        f"update {A}.dim_customers set email = 'x@dim' where customer_id = {dim_customer} and is_current",
        f"update {A}.stg_customers set email = 'x@staging' where id = {stg_customer}",
    )
    new_customer = s.one(f"select id from {A}.stg_customers where _bankflow_load_seq = {stg_cus} "
                         f"and id not in ({dim_customer}, {stg_customer}, {deleted_customer}) order by id")
    s.run(f"update {A}.stg_customers set email = null where id = {new_customer}")


def break_old(s: State) -> None:
    """The same kinds of violation in rows, keys and source transactions that no latest build touched."""
    fact, stg_acc = s.top("fact_transactions"), s.top("stg_accounts")
    touched_accounts = (f"(select id from {A}.stg_accounts where _bankflow_load_seq = {stg_acc} "
                        f"union select account_id from {A}.fact_transactions where _bankflow_load_seq = {fact})")
    old_legs = [i for (i,) in s.wh.query(
        f"select id from {A}.fact_transactions where _bankflow_load_seq < {fact} and not is_deleted "
        f"and txn_type = 'DEPOSIT' and account_id not in {touched_accounts} order by id")]
    assert len(old_legs) >= 5, old_legs
    o1, o2, o3, o4, o5 = old_legs[:5]
    old_stg_leg = s.one(f"select id from {A}.stg_transactions where _bankflow_load_seq < "
                        f"{s.top('stg_transactions')} and txn_type = 'DEPOSIT' and id not in ({o1}, {o2}, {o3}, "
                        f"{o4}, {o5}) order by id")
    old_account = s.one(f"select id from {A}.stg_accounts where _bankflow_load_seq < {stg_acc} and not is_deleted "
                        f"and customer_id in (select id from {A}.stg_customers where _bankflow_load_seq < "
                        f"{s.top('stg_customers')}) order by id")
    # an older transfer: its OUT leg now names its own account as the counterpart (neither leg pairs any more)
    p_tx = s.one(
        f"select source_tx_id from {A}.fact_transactions where txn_type = 'TRANSFER_OUT' and not is_deleted "
        f"and _bankflow_load_seq < {fact} and source_tx_id not in "
        f"(select _tx_id from raw.transactions where id in {latest_ids(s, 'fact_transactions')}) "
        f"and source_tx_id not in (select source_tx_id from {A}.fact_transactions where is_deleted) "
        "order by source_tx_id desc")
    untouched = (f"(select id from {A}.account_history where id not in {latest_ids(s, 'stg_accounts')} "
                 f"group by id having max(_bankflow_load_seq) < {s.top('account_history')} and count(*) >= 2)")
    old_keys = [i for (i,) in s.wh.query(f"select id from {untouched} as k order by id")]
    assert len(old_keys) >= 3, old_keys
    k1, k2, k3 = old_keys[:3]
    balances = [i for (i,) in s.wh.query(
        f"select account_id from {A}.account_balances where _bankflow_accounts_seq < "
        f"{s.top('account_balances', '_bankflow_accounts_seq')} order by account_id")]
    assert len(balances) >= 2, balances
    old_customers = [i for (i,) in s.wh.query(
        f"select id from {A}.stg_customers where _bankflow_load_seq < {s.top('stg_customers')} "
        f"and not is_deleted and id in (select customer_id from {A}.dim_customers where _bankflow_load_seq < "
        f"{s.top('dim_customers')}) order by id desc")]
    assert len(old_customers) >= 3, old_customers
    c1, c2, c3 = old_customers[:3]
    s.run(
        f"update {A}.fact_transactions set amount = null where id = {o1}",
        f"update {A}.fact_transactions set status = 'PENDING' where id = {o2}",
        f"insert into {A}.fact_transactions select * from {A}.fact_transactions where id = {o3}",
        f"update {A}.fact_transactions set account_id = 999991 where id = {o4}",
        f"update {A}.fact_transactions set signed_amount = -signed_amount where id = {o5}",
        f"update {A}.stg_transactions set account_id = 999993 where id = {old_stg_leg}",
        f"update {A}.stg_accounts set customer_id = 999994 where id = {old_account}",
        f"update {A}.dim_accounts set customer_id = 999995 where account_id = (select min(account_id) from "
        f"{A}.dim_accounts where is_current and not is_deleted and _bankflow_load_seq < {s.top('dim_accounts')} "
        f"and account_id not in {latest_ids(s, 'stg_accounts')}) and is_current",
        f"update {A}.fact_transactions set related_account_id = account_id where source_tx_id = {p_tx} "
        "and txn_type = 'TRANSFER_OUT'",
        f"update {A}.account_history set is_current = true, valid_to = null where id = {k1} and version_number = 1",
        f"update {A}.account_history set valid_to = valid_from - interval 1 day where id = {k2} "
        "and version_number = 1",
        f"insert into {A}.account_history select * from {A}.account_history where id = {k3} and version_number = 1",
        f"update {A}.account_balances set difference = 1 where account_id = {balances[0]}",
        f"update {A}.account_balances set difference = null where account_id = {balances[1]}",
        f"insert into {A}.account_balances select * from {A}.account_balances where account_id = {balances[0]}",
        f"update {A}.dim_customers set email = 'old@dim' where customer_id = {c1} and is_current",
        f"update {A}.stg_customers set email = 'old@staging' where id = {c2}",
        f"update {A}.stg_customers set email = null where id = {c3}",
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    log = raw_banking.RawBankingLog(seed=515151)
    wh = Warehouse(tmp_path_factory.mktemp("narrowed"))
    raw_banking.build_initial(log)
    wh.load(take(log))
    wh.steps()
    for _ in range(12):  # customers with an account and deposits only (no transfer): older than the latest
        with log.transaction():
            aid = log.open_account(log.new_customer())
        for _ in range(2):
            with log.transaction():
                log.deposit(aid)
    wh.load(take(log))
    wh.steps()
    raw_banking.build_more(log)
    log.random_activity(25)
    wh.load(take(log))
    wh.steps()
    return wh


def test_a_narrowed_cycle_checks_what_it_changed_and_a_full_run_everything(built: Warehouse,
                                                                          tmp_path: Path) -> None:
    clean = run_tests(built, CHANGED)
    assert {n for n, (status, _) in clean.items() if status != "pass"} == set(), "clean data passes narrowed"

    new = built.copy(tmp_path / "new")
    break_new(State(new))
    both = new.copy(tmp_path / "both")
    break_old(State(both))
    narrowed = run_tests(both, CHANGED)
    full = run_tests(both, [])
    assert set(narrowed) == set(full) == set(clean)

    for name in NARROWED:
        narrowed_status, narrowed_sql = by_prefix(narrowed, name)
        full_status, full_sql = by_prefix(full, name)
        assert narrowed_sql != full_sql and "max(_bankflow" in narrowed_sql, name
        assert "max(_bankflow" not in full_sql, name
        assert narrowed_status == full_status == "fail", (name, narrowed_status, full_status)
        new_only = failing_rows(new, full_sql)
        got = failing_rows(both, narrowed_sql)
        assert new_only, f"{name}: no new violation to catch"
        assert got == new_only, f"{name}: the narrowed check returns {got}, this cycle's violations are {new_only}"
        everything = failing_rows(both, full_sql)
        assert everything != new_only, f"{name}: the full check finds no old violation ({everything})"

    # sources and snapshots keep no mark: their tests read every row on every cycle
    for name, (_, sql) in clean.items():
        if name.startswith(("source_", "unique_customers_snapshot", "unique_accounts_snapshot", "not_null_")):
            assert sql == full[name][1] and "_bankflow" not in sql, name
    assert any(n.startswith("source_not_null_raw_transactions") for n in clean)


def test_full_runs_still_check_every_row(built: Warehouse, tmp_path: Path) -> None:
    """Without the var (apply, a run's first cycle, the one after a failure) nothing is narrowed."""
    other = built.copy(tmp_path / "full")
    full = run_tests(other, [])
    assert all(status == "pass" for status, _ in full.values())
    assert not any("max(_bankflow" in sql for _, sql in full.values())
