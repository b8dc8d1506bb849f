"""banking_dbt keeps the scale of the source's money columns: a numeric(20,4) amount keeps its four decimals from raw
through staging, history, snapshots and into the marts, on dbt-duckdb and on dbt-snowflake (fakesnow); a money
column that is not an exact decimal fails the run at compile time instead of going float.

Before: `money()` cast every amount to DECIMAL(18,2), so a 4-decimal value was rounded to cents while every dbt test
passed (the reconciliation compared rounded with rounded).
"""

from __future__ import annotations

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
STEPS: list[list[str]] = [["run", "--select", "staging", "history"], ["snapshot"], ["run", "--select", "marts"],
                          ["test"]]
WIDE = "DECIMAL(20,4)"
MONEY = {"accounts": ("opening_balance", "balance"), "transactions": ("amount",)}


def _failures(res: Any) -> dict[str, str]:
    if res.result is None or not hasattr(res.result, "results"):
        return {"<no results>": str(res.exception)}
    return {r.node.name: f"{r.status}: {r.message}" for r in res.result.results
            if str(r.status) not in ("success", "pass")}


@pytest.fixture
def wide_money(monkeypatch: pytest.MonkeyPatch) -> None:
    """raw's money columns as numeric(20,4) declares them (DECIMAL(20,4) / NUMBER(20,4))."""
    for table, columns in MONEY.items():
        monkeypatch.setitem(raw_banking.COLUMNS, table, [
            (n, WIDE if n in columns else t) for n, t in raw_banking.COLUMNS[table]])
    monkeypatch.setitem(raw_banking.SNOWFLAKE_TYPES, WIDE, "NUMBER(20,4)")


def four_decimal_activity(log: raw_banking.RawBankingLog) -> dict[str, Any]:
    """A new account opened with 10.1234 and a deposit of 0.0001 and a withdrawal of 3.3333 on it, balances exact."""
    with log.transaction():
        aid = log.open_account(log.new_customer(), opening_cents=0)
        acct = dict(log.rows["accounts"][aid], opening_balance=Decimal("10.1234"), balance=Decimal("10.1234"))
        log._change("accounts", "u", acct)
    tids = []
    for txn_type, amount in (("DEPOSIT", Decimal("0.0001")), ("WITHDRAWAL", Decimal("3.3333"))):
        with log.transaction():
            tid = log._new_id("transactions")
            log._change("transactions", "c", {
                "id": tid, "account_id": aid, "txn_type": txn_type, "amount": amount, "related_account_id": None,
                "status": "COMPLETED", "created_at": log._now()})
            acct = dict(log.rows["accounts"][aid])
            acct["balance"] += amount if txn_type == "DEPOSIT" else -amount
            log._change("accounts", "u", acct)
            tids.append(tid)
    assert log.rows["accounts"][aid]["balance"] == Decimal("6.7902")
    return {"account": aid, "deposit": tids[0], "withdrawal": tids[1]}


def test_four_decimals_survive_staging_history_snapshots_and_marts_on_duckdb(tmp_path: Path,
                                                                             wide_money: None) -> None:
    database = tmp_path / "warehouse.duckdb"
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(
        "bankflow:\n  target: local\n  outputs:\n    local:\n      type: duckdb\n"
        f"      path: '{database.as_posix()}'\n      schema: analytics\n      threads: 1\n")
    log = raw_banking.RawBankingLog(seed=99)
    raw_banking.build_initial(log)
    moved = four_decimal_activity(log)
    log.flush(database)

    for args in STEPS:
        res = dbt_main.dbtRunner().invoke([*args, "--project-dir", str(PROJECT_DIR), "--profiles-dir", str(profiles),
                                           "--target-path", str(tmp_path / "target"),
                                           "--log-path", str(tmp_path / "logs")])
        assert res.success and not _failures(res), f"dbt {args}: {res.exception or _failures(res)}"

    with duckdb.connect(str(database)) as con:
        def one(sql: str) -> tuple[Any, ...]:
            row = con.execute(sql).fetchone()
            assert row is not None, sql
            return tuple(row)

        aid, dep, wd = moved["account"], moved["deposit"], moved["withdrawal"]
        assert one(f"select amount from analytics.stg_transactions where id = {dep}") == (Decimal("0.0001"),)
        assert one(f"select amount, signed_amount from analytics.fact_transactions where id = {wd}") == (
            Decimal("3.3333"), Decimal("-3.3333"))
        assert one(f"select opening_balance, balance from analytics.stg_accounts where id = {aid}") == (
            Decimal("10.1234"), Decimal("6.7902"))
        assert one(f"select balance from analytics.account_history where id = {aid} and is_current") == (
            Decimal("6.7902"),)
        assert one(f"select balance from analytics.dim_accounts where account_id = {aid} and is_current") == (
            Decimal("6.7902"),)
        assert one("select opening_balance, transactions_total, computed_balance, source_balance, difference "
                   f"from analytics.account_balances where account_id = {aid}") == (
            Decimal("10.1234"), Decimal("-3.3332"), Decimal("6.7902"), Decimal("6.7902"), Decimal("0"))
        # every balance still reconciles exactly, and the marts carry the source's type, not a fixed (18,2)
        assert one("select count(*) from analytics.account_balances where difference <> 0") == (0,)
        balances = dict(con.execute("select account_id, source_balance from analytics.account_balances").fetchall())
        assert balances == log.balances()
        types = dict(con.execute(
            "select table_name || '.' || column_name, data_type from information_schema.columns "
            "where table_schema = 'analytics' and column_name in ('amount', 'signed_amount', 'balance', "
            "'computed_balance', 'difference')").fetchall())
        assert types["fact_transactions.amount"] == types["fact_transactions.signed_amount"] == WIDE, types
        assert types["dim_accounts.balance"] == WIDE, types
        assert types["account_balances.computed_balance"] == types["account_balances.difference"] == \
            "DECIMAL(38,4)", types


def _duckdb_profiles(root: Path, database: Path) -> Path:
    profiles = root / "profiles"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(
        "bankflow:\n  target: local\n  outputs:\n    local:\n      type: duckdb\n"
        f"      path: '{database.as_posix()}'\n      schema: analytics\n      threads: 1\n")
    return profiles


def test_raw_widened_in_place_widens_the_kept_fact_and_snapshot(tmp_path: Path) -> None:
    """raw migrated from DECIMAL(18,2) to DECIMAL(20,4) under an existing warehouse: the incremental fact and the
    accounts snapshot (tables dbt keeps across runs) are widened before new rows go in, every test passes and the
    new 4-decimal values are exact in the fact, the dimension and the balances."""
    database = tmp_path / "warehouse.duckdb"
    profiles = _duckdb_profiles(tmp_path, database)

    def steps() -> None:
        for args in STEPS:
            res = dbt_main.dbtRunner().invoke([*args, "--project-dir", str(PROJECT_DIR),
                                               "--profiles-dir", str(profiles),
                                               "--target-path", str(tmp_path / "target"),
                                               "--log-path", str(tmp_path / "logs")])
            assert res.success and not _failures(res), f"dbt {args}: {res.exception or _failures(res)}"

    log = raw_banking.RawBankingLog(seed=99)
    raw_banking.build_initial(log)
    log.flush(database)
    steps()
    with duckdb.connect(str(database)) as con:
        for table, columns in MONEY.items():
            for column in columns:
                con.execute(f"alter table raw.{table} alter column {column} type {WIDE}")
    moved = four_decimal_activity(log)
    log.flush(database)
    steps()

    with duckdb.connect(str(database)) as con:
        aid = moved["account"]
        assert con.execute(f"select amount, signed_amount from analytics.fact_transactions where id = "
                           f"{moved['withdrawal']}").fetchall() == [(Decimal("3.3333"), Decimal("-3.3333"))]
        assert con.execute(f"select balance from analytics.dim_accounts where account_id = {aid} and is_current"
                           ).fetchall() == [(Decimal("6.7902"),)]
        assert con.execute(f"select computed_balance, difference from analytics.account_balances "
                           f"where account_id = {aid}").fetchall() == [(Decimal("6.7902"), Decimal("0"))]
        types = dict(con.execute(
            "select table_name || '.' || column_name, data_type from information_schema.columns "
            "where table_schema = 'analytics' and table_name in ('fact_transactions', 'accounts_snapshot')"
        ).fetchall())
        assert types["fact_transactions.amount"] == types["fact_transactions.signed_amount"] == WIDE, types
        assert types["accounts_snapshot.balance"] == types["accounts_snapshot.opening_balance"] == WIDE, types
        # the rows kept from before the migration are unchanged
        n_facts = con.execute("select count(*), count(distinct id) from analytics.fact_transactions").fetchone()
        assert n_facts == (len(log.rows["transactions"]),) * 2


def test_money_column_that_is_not_a_decimal_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DOUBLE amount in raw is refused when staging compiles, naming the column: never silently float."""
    monkeypatch.setitem(raw_banking.COLUMNS, "transactions", [
        (n, "DOUBLE" if n == "amount" else t) for n, t in raw_banking.COLUMNS["transactions"]])
    database = tmp_path / "warehouse.duckdb"
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(
        "bankflow:\n  target: local\n  outputs:\n    local:\n      type: duckdb\n"
        f"      path: '{database.as_posix()}'\n      schema: analytics\n      threads: 1\n")
    raw_banking.write_raw_banking(database, seed=5)
    res = dbt_main.dbtRunner().invoke(["run", "--select", "stg_transactions", "stg_accounts",
                                       "--project-dir", str(PROJECT_DIR), "--profiles-dir", str(profiles),
                                       "--target-path", str(tmp_path / "target"),
                                       "--log-path", str(tmp_path / "logs")])
    failed = _failures(res)
    assert not res.success and "stg_transactions" in failed and "stg_accounts" not in failed, failed
    assert "amount is double, not an exact decimal" in failed["stg_transactions"], failed


@pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result")
def test_four_decimals_on_dbt_snowflake_fakesnow(tmp_path: Path, wide_money: None) -> None:
    """The Snowflake path: NUMBER(20,4) in raw, the four steps on dbt-snowflake (fakesnow), four decimals kept."""
    fakesnow = pytest.importorskip("fakesnow")
    pytest.importorskip("dbt.adapters.snowflake")
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(
        "bankflow:\n  target: sf\n  outputs:\n    sf:\n      type: snowflake\n      account: fake\n"
        "      user: fake\n      password: fake\n      role: transformer\n      database: BANKING\n"
        "      warehouse: WH\n      schema: ANALYTICS\n      threads: 1\n")
    log = raw_banking.RawBankingLog(seed=99)
    raw_banking.build_initial(log)
    moved = four_decimal_activity(log)
    with fakesnow.patch(create_database_on_connect=True):
        import snowflake.connector

        con = snowflake.connector.connect(database="BANKING", schema="RAW")
        try:
            cur = con.cursor()
            raw_banking.flush_snowflake(log, cur)
            for args in STEPS:
                res = dbt_main.dbtRunner().invoke([
                    *args, "--project-dir", str(PROJECT_DIR), "--profiles-dir", str(profiles),
                    "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs")])
                assert res.success, f"dbt {args} on fakesnow: {res.exception or _failures(res)}"

            def q(sql: str) -> list[Any]:
                return list(cur.execute(sql).fetchall())  # type: ignore[union-attr]

            aid = moved["account"]
            assert q(f"select amount, signed_amount from ANALYTICS.fact_transactions where id = {moved['withdrawal']}"
                     ) == [(Decimal("3.3333"), Decimal("-3.3333"))]
            assert q("select transactions_total, computed_balance, source_balance, difference "
                     f"from ANALYTICS.account_balances where account_id = {aid}") == [
                (Decimal("-3.3332"), Decimal("6.7902"), Decimal("6.7902"), Decimal("0"))]
            balances = dict(q("select account_id, computed_balance from ANALYTICS.account_balances"))
            assert all(isinstance(v, Decimal) for v in balances.values()), balances
            assert balances == log.balances()
            assert q(f"select balance from ANALYTICS.dim_accounts where account_id = {aid} and is_current") == [
                (Decimal("6.7902"),)]
        finally:
            con.close()
