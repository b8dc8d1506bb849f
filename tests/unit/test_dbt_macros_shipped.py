"""bankflow's generic dbt macros: shipped once as package data, copied by `bankflow init`, carried unchanged by
banking_dbt; and the ledger SQL that gives raw its commit position (load_seq) on both warehouses."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import duckdb
import sqlglot
from sqlglot import exp

from bankflow.scaffold import Project, render_project
from bankflow.scaffold.render import example_source, shipped_macros
from tests.specs.support import load_case

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "bankflow" / "templates" / "dbt" / "macros"
BANKING = REPO / "banking_dbt" / "macros" / "bankflow"


def test_banking_dbt_carries_the_shipped_macros_byte_for_byte() -> None:
    shipped = {p.name: p.read_bytes() for p in SHIPPED.glob("*.sql")}
    assert {"change_log.sql", "incremental.sql", "money.sql"} <= set(shipped)
    assert {p.name: p.read_bytes() for p in BANKING.glob("*.sql")} == shipped, (
        "banking_dbt/macros/bankflow/ drifted from bankflow/templates/dbt/macros/: copy the shipped files over")
    # only banking-specific macros stay outside macros/bankflow/
    assert not set(shipped) & {p.name for p in (REPO / "banking_dbt" / "macros").glob("*.sql")}


def test_init_writes_the_shipped_macros() -> None:
    files = render_project(Project("demo", example_source("demo"), example=True))
    assert {k: v for k, v in files.items() if k.startswith("dbt/macros/")} == {
        f"dbt/macros/bankflow/{name}": text for name, text in shipped_macros().items()}
    assert shipped_macros()["incremental.sql"] == (SHIPPED / "incremental.sql").read_text(encoding="utf-8")


def test_the_macros_are_package_data() -> None:
    line = re.search(r"^bankflow = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), re.M)
    assert line, "pyproject.toml: [tool.setuptools.package-data] bankflow = [...]"
    globs = re.findall(r'"([^"]+)"', line.group(1))
    for path in SHIPPED.glob("*.sql"):
        relative = path.relative_to(REPO / "bankflow").as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in globs), relative


def test_no_mark_on_lsn_and_no_adapter_only_sql() -> None:
    """The high-water marks follow load_seq; the SQL stays portable (no QUALIFY, no project-named dispatch)."""
    for path in [*SHIPPED.glob("*.sql"), *(REPO / "banking_dbt" / "models").rglob("*.sql")]:
        # SQL only: Jinja comments ({# … #}) and SQL line comments may name what is avoided
        text = re.sub(r"\{#.*?#\}|--[^\n]*", "", path.read_text(encoding="utf-8"), flags=re.S).lower()
        assert not re.search(r"max\(\s*_lsn\s*\)", text) and not re.search(r"\bqualify\b", text), path
        assert "'banking_dbt')" not in text, path


def test_ledger_ddl_has_load_seq_and_migrates_old_ledgers() -> None:
    resolved = load_case("banking-local")
    dialect = resolved.spec.warehouse.dialect()
    con = duckdb.connect()
    con.execute("create schema raw")
    # a ledger as bankflow created it before load_seq
    con.execute("create table raw._bankflow_loaded_files (file_key VARCHAR PRIMARY KEY, raw_table VARCHAR NOT NULL, "
                "rows BIGINT NOT NULL, loaded_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)")
    con.execute("insert into raw._bankflow_loaded_files (file_key, raw_table, rows) values ('old.parquet', 't', 1)")
    for _ in range(2):  # idempotent
        con.execute(dialect.ledger_ddl())
        for statement in dialect.ledger_migrations():
            con.execute(statement)
    assert con.execute("select file_key, load_seq, raw_file from raw._bankflow_loaded_files").fetchall() == [
        ("old.parquet", None, None)]
    fresh = duckdb.connect()
    fresh.execute("create schema raw")
    fresh.execute(dialect.ledger_ddl())
    names = [r[0] for r in fresh.execute("describe raw._bankflow_loaded_files").fetchall()]
    assert {"load_seq", "raw_file"} <= set(names)


def test_snowflake_ledger_sql_parses() -> None:
    from bankflow.warehouses.snowflake.adapter import SnowflakeAdapter

    resolved = load_case("banking-stack")
    dialect = resolved.spec.warehouse.dialect()
    assert "LOAD_SEQ NUMBER(19,0)" in dialect.ledger_ddl() and "RAW_FILE VARCHAR" in dialect.ledger_ddl()
    adapter = SnowflakeAdapter(resolved, resolved.spec.warehouse, connection=object())
    for sql in [dialect.ledger_ddl(), *dialect.ledger_migrations(), adapter.ledger_insert(3)]:
        parsed = sqlglot.parse_one(sql.replace("?", "NULL"), read="snowflake")
        assert not isinstance(parsed, exp.Command), sql
    insert = adapter.ledger_insert(2)
    assert insert.count("?") == 10 and "MAX(LOAD_SEQ), 0) + 1" in insert
