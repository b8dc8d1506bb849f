"""The verify guard (bankflow.sqlguard): one read-only SELECT per verify query, judged by sqlglot per dialect.

Each hostile query below is refused with its reason, at `bankflow validate` (file:line, hint) and by the guard
`verify` calls before it runs a query; the banking spec's own checks pass on both environments' dialects.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("sqlglot")

from bankflow.cli import main
from bankflow.spec.loader import load_spec
from bankflow.sqlguard import (
    ALLOWED_FUNCTIONS,
    DENIED,
    SOURCE_DIALECT,
    QueryRefused,
    checked_query,
    denied_reason,
    refusal,
)
from bankflow.verify import fill
from tests.specs.support import MINIMAL, REPO, SPECS

WAREHOUSE_DIALECTS = sorted({"duckdb", "snowflake"})  # the sqlglot names the warehouse dialects declare

FILES = "reads or writes files"
STATE = "changes replication, sessions or server state"
WRITES = "changes data or state"
STRING_SQL = "runs SQL given as a string"
UNKNOWN = "not a function a verify query may call"
PATH = "looks like a file path"
NOT_SELECT = "not a SELECT"

# (dialect, query, a substring of the reason)
HOSTILE = [
    # --- PostgreSQL (source_sql)
    ("postgres", "with x as (delete from shop.accounts returning *) select count(*) from x", "contains DELETE"),
    ("postgres", "with x as (update shop.accounts set balance = 0 returning 1) select * from x", "contains UPDATE"),
    ("postgres", "with x as (insert into shop.accounts values (1) returning 1) select * from x", "contains INSERT"),
    ("postgres", "select pg_drop_replication_slot('bankflow')", "pg_drop_replication_slot(), which " + STATE),
    ("postgres", "select pg_create_logical_replication_slot('s', 'pgoutput')", STATE),
    ("postgres", "select * from pg_logical_slot_get_changes('bankflow', null, null)", STATE),
    ("postgres", "select pg_read_file('/etc/passwd')", "pg_read_file(), which " + FILES),
    ("postgres", "select pg_catalog.pg_read_file('/etc/passwd')", FILES),
    ('postgres', 'select "PG_READ_FILE"(\'/etc/passwd\')', FILES),
    ("postgres", "select PG_READ_BINARY_FILE('/etc/passwd')", FILES),
    ("postgres", "select * from pg_ls_dir('.')", FILES),
    ("postgres", "select pg_stat_file('postgresql.conf')", FILES),
    ("postgres", "select lo_import('/etc/passwd')", FILES),
    ("postgres", "select lo_export(1, '/tmp/x')", FILES),
    ("postgres", "select * from dblink('host=evil', 'select 1') as t(x int)", "reaches another server"),
    ("postgres", "select pg_terminate_backend(pid) from pg_stat_activity", STATE),
    ("postgres", "select pg_cancel_backend(1)", STATE),
    ("postgres", "select set_config('default_transaction_read_only', 'off', false)", STATE),
    ("postgres", "select pg_logical_emit_message(true, 'x', 'y')", STATE),
    ("postgres", "select nextval('shop.accounts_id_seq')", STATE),
    ("postgres", "select setval('shop.accounts_id_seq', 1)", STATE),
    ("postgres", "select pg_advisory_lock(1)", STATE),
    ("postgres", "select pg_sleep(3600)", STATE),
    ("postgres", "select pg_reload_conf()", STATE),
    ("postgres", "select query_to_xml('select pg_drop_replication_slot(''x'')', true, true, '')", STRING_SQL),
    ("postgres", "select my_security_definer_function()", UNKNOWN),
    ("postgres", "select * into shop.copy from shop.accounts", "SELECT … INTO"),
    ("postgres", "select * from shop.accounts for update", "FOR UPDATE"),
    ("postgres", "select 1; drop table shop.accounts", "2 statements"),
    ("postgres", "copy shop.accounts to '/tmp/out'", "COPY statement, " + NOT_SELECT),
    ("postgres", "delete from shop.accounts", "DELETE statement, " + NOT_SELECT),
    ("postgres", "set default_transaction_read_only = off", NOT_SELECT),
    ("postgres", "commit", NOT_SELECT),
    ("postgres", "select (", "cannot be parsed as postgres SQL"),
    # a call hidden from a parser that does not nest comments (PostgreSQL and sqlglot both nest them) is seen
    ("postgres", "select 1 /* a */, pg_read_file('/etc/passwd') -- */", FILES),
    # --- DuckDB (warehouse_sql)
    ("duckdb", "with x as (delete from analytics.account_balances returning *) select count(*) from x",
     "contains DELETE"),
    ("duckdb", "select * from read_csv('/etc/passwd')", "read_csv(), which " + FILES),
    ("duckdb", "select * from read_csv_auto('/etc/passwd')", FILES),
    ("duckdb", "select * from read_parquet('/x/*.parquet')", FILES),
    ("duckdb", "select * from read_json_auto('/x.json')", FILES),
    ("duckdb", "from read_text('/etc/passwd')", FILES),
    ("duckdb", "select * from read_blob('/etc/passwd')", FILES),
    ("duckdb", "select * from glob('/etc/*')", FILES),
    ("duckdb", "select * from parquet_metadata('/x.parquet')", FILES),
    ("duckdb", "select * from sniff_csv('/etc/passwd')", FILES),
    ("duckdb", "select getenv('HOME')", FILES),
    ("duckdb", "select * from duckdb_secrets()", FILES),
    ("duckdb", "select * from '/etc/passwd'", PATH),
    ("duckdb", 'select * from "accounts.csv"', PATH),
    ("duckdb", "select * from 's3://bucket/key.parquet'", PATH),
    ("duckdb", "select * from query('delete from analytics.account_balances')", STRING_SQL),
    ("duckdb", "select * from postgres_scan('host=x', 'public', 't')", "reaches another server"),
    ("duckdb", "copy analytics.account_balances to '/tmp/out.csv'", NOT_SELECT),
    ("duckdb", "attach '/tmp/other.duckdb' as other", NOT_SELECT),
    ("duckdb", "install httpfs", NOT_SELECT),
    ("duckdb", "load httpfs", "LOAD statement"),
    ("duckdb", "set enable_external_access = true", NOT_SELECT),
    ("duckdb", "pragma enable_profiling", NOT_SELECT),
    ("duckdb", "create table analytics.x as select 1", NOT_SELECT),
    ("duckdb", "select 1; select 2", "2 statements"),
    # --- Snowflake (warehouse_sql on the stack environment)
    ("snowflake", "select system$cancel_all_queries(1)", "system function"),
    ("snowflake", "select $1 from @bankflow_stage/raw/x.parquet", "stage or URL"),
    ("snowflake", "select * from table(result_scan(last_query_id()))", "calls result_scan()"),
    ("snowflake", "select * from analytics.t where my_udf(id)", UNKNOWN),
    ("snowflake", "select get_presigned_url(@s, 'x')", FILES),
    ("snowflake", "call some_procedure()", "CALL statement"),
    ("snowflake", "with x as (delete from raw.accounts) select 1", "contains DELETE"),
    ("snowflake", "merge into raw.a using raw.b on a.id = b.id when matched then delete", NOT_SELECT),
]


@pytest.mark.parametrize(("dialect", "sql", "reason"), HOSTILE, ids=[f"{d}:{q[:40]}" for d, q, _ in HOSTILE])
def test_hostile_query_is_refused_with_its_reason(dialect: str, sql: str, reason: str) -> None:
    refused = refusal(sql, dialect)
    assert refused is not None, f"{dialect} accepted: {sql}"
    assert reason in refused.reason, refused.reason
    assert refused.hint
    with pytest.raises(QueryRefused):
        checked_query(sql, dialect)


def test_the_table_covers_every_dialect() -> None:
    assert {d for d, _, _ in HOSTILE} == {SOURCE_DIALECT, *WAREHOUSE_DIALECTS}
    assert len(HOSTILE) >= 60


@pytest.mark.parametrize("dialect", [SOURCE_DIALECT, *WAREHOUSE_DIALECTS])
@pytest.mark.parametrize("name", sorted({p.replace("*", "x") for ps in DENIED.values() for p in ps}))
def test_every_denied_function_is_refused_in_every_dialect(name: str, dialect: str) -> None:
    """Also where sqlglot knows the function (read_csv, read_parquet: typed nodes, not anonymous calls)."""
    refused = refusal(f"select * from {name}('x')", dialect)
    if refused is None or "cannot be parsed" in refused.reason:
        refused = refusal(f"select {name}('x') as v", dialect)
    assert refused is not None, name
    why = denied_reason(name)
    assert (why is not None and why in refused.reason) or "cannot be parsed" in refused.reason, refused.reason


def test_allowed_and_denied_do_not_overlap() -> None:
    assert not [name for name in ALLOWED_FUNCTIONS if denied_reason(name)]


READ_ONLY = [
    ("postgres", "select id, balance from shop.accounts"),
    ("postgres", "with a as (select id, balance from shop.accounts) select a.id, sum(a.balance) from a group by 1"),
    ("postgres", "select account_id, txn_type, count(*), sum(amount) filter (where amount > 0) "
                 "from shop.transactions group by account_id, txn_type"),
    ("postgres", "select id, coalesce(email, ''), date_trunc('day', created_at), age(created_at), "
                 "balance::numeric(18, 2) from shop.customers where created_at > now() - interval '1 day'"),
    ("postgres", "select x from (select 1 as x) s union all select 2"),
    ("postgres", "select id, row_number() over (partition by customer_id order by id) from shop.accounts"),
    ("postgres", "select id from shop.accounts;"),  # one trailing ';' is one statement
    ("duckdb", "select account_id, sum(amount) from analytics.fact_transactions group by all"),
    ("duckdb", "from analytics.dim_customers where is_current and not is_deleted"),
    ("duckdb", 'select "account_id", epoch_ms(ts) from "analytics"."account_balances"'),
    ("snowflake", "select account_id, iff(balance > 0, 1, 0), zeroifnull(balance) from analytics.account_balances"),
]


@pytest.mark.parametrize(("dialect", "sql"), READ_ONLY)
def test_read_only_queries_pass_and_run_as_parsed(dialect: str, sql: str) -> None:
    assert refusal(sql, dialect) is None
    rendered = checked_query(sql, dialect)
    assert refusal(rendered, dialect) is None  # what runs is sqlglot's rendering of what was checked
    assert "/*" not in rendered


def test_comments_do_not_reach_the_server() -> None:
    assert checked_query("select 1 /* note */ as x -- trailing", SOURCE_DIALECT) == "SELECT 1 AS x"


@pytest.mark.parametrize("env", [None, "stack"])
def test_the_banking_specs_own_checks_are_accepted(env: str | None) -> None:
    resolved = load_spec(REPO / "pipelines" / "banking.yaml", env=env, unset="defer")
    warehouse_dialect = resolved.spec.warehouse.dialect().sqlglot_dialect
    assert warehouse_dialect in WAREHOUSE_DIALECTS
    checks = resolved.spec.verify.checks
    assert len(checks) >= 5
    for check in checks:
        assert refusal(fill(resolved, check.source_sql), SOURCE_DIALECT) is None, check.name
        assert refusal(fill(resolved, check.warehouse_sql), warehouse_dialect) is None, check.name


# ------------------------------------------------------------------ bankflow validate: file:line and a hint

def _spec_with_check(directory: Path, source_sql: str, warehouse_sql: str) -> Path:
    shutil.copytree(SPECS / "minimal_dbt", directory / "minimal_dbt")
    text = MINIMAL.read_text(encoding="utf-8")
    assert text.count("environments:\n") == 1
    check = (f"verify:\n  checks:\n    - name: hostile\n      source_sql: {source_sql}\n"
             f"      warehouse_sql: {warehouse_sql}\nenvironments:\n")
    path = directory / "spec.yaml"
    path.write_text(text.replace("environments:\n", check), encoding="utf-8")
    return path


@pytest.mark.parametrize(("source_sql", "warehouse_sql", "line", "key", "reason"), [
    ("select id from shop.items", '"with x as (delete from analytics.items returning *) select count(*) from x"',
     32, "warehouse_sql", "contains DELETE"),
    ("\"select pg_drop_replication_slot('mini')\"", "select 1", 31, "source_sql", "pg_drop_replication_slot()"),
    ("\"select pg_read_file('/etc/passwd')\"", "select 1", 31, "source_sql", "pg_read_file()"),
    ("select 1", "\"select * from read_csv('/etc/passwd')\"", 32, "warehouse_sql", "read_csv()"),
])
def test_validate_refuses_at_the_querys_line(source_sql: str, warehouse_sql: str, line: int, key: str, reason: str,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _spec_with_check(tmp_path, source_sql, warehouse_sql)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "spec.yaml"]) == 1
    err = capsys.readouterr().err
    pattern = (rf"^spec\.yaml:{line}:\d+: error: verify\.checks\[0\]\.{key}: a verify query must be a single "
               rf"SELECT that only reads: it [^\n]*{re.escape(reason)}[^\n]* \(hint: [^\n]+\)$")
    assert re.search(pattern, err, re.MULTILINE), err
    assert "Traceback" not in err


def test_validate_accepts_a_read_only_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _spec_with_check(tmp_path, "select id, price from shop.items", "select id, price from analytics.items")
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "spec.yaml"]) == 0, capsys.readouterr().err
