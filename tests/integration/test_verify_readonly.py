"""`verify` cannot change or read what it should not, on the real servers: the embedded PostgreSQL and DuckDB.

The spec's checks below are hostile (validation would refuse them; the test builds the spec past it, as a spec
edited after validation or a library caller would): a DELETE inside a CTE on the warehouse, a replication slot drop
and a file read on the source, a file read on the warehouse. Each check fails with its reason, the rows and the slot
are all still there, and no file's content reaches the report. Under the guard, the connections themselves refuse:
the source session is read-only, the warehouse is opened read-only without file access.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

duckdb = pytest.importorskip("duckdb")
psycopg2 = pytest.importorskip("psycopg2")
pytest.importorskip("sqlglot")

from bankflow.source.embedded import EmbeddedPostgres  # noqa: E402
from bankflow.spec.loader import ResolvedSpec, load_spec  # noqa: E402
from bankflow.spec.models import Verify, VerifyCheck  # noqa: E402
from bankflow.verify import source_connection, verify  # noqa: E402
from bankflow.warehouses.duckdb.adapter import DuckDBAdapter  # noqa: E402
from bankflow.warehouses.duckdb.config import DuckDBWarehouse  # noqa: E402
from tests.fixtures.services import scratch_database  # noqa: E402

pytestmark = pytest.mark.integration

DATABASE = "verify_guard"
SLOT = "verify_guard_slot"
ROWS = [(1, "10.50"), (2, "-3.25"), (3, "0.00")]
SECRET_FILE_MARKER = "bankflow-verify-secret-line"


@pytest.fixture(scope="module")
def source(pg_server: EmbeddedPostgres) -> Iterator[dict]:
    """A database of its own with shop.accounts and a logical replication slot; both go away afterwards."""
    with scratch_database(pg_server, DATABASE) as (kwargs, conn):
        with conn.cursor() as cur:
            cur.execute("CREATE SCHEMA shop; CREATE TABLE shop.accounts (id bigint PRIMARY KEY, "
                        "balance numeric(18,2))")
            cur.executemany("INSERT INTO shop.accounts VALUES (%s, %s)", ROWS)
            cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT,))
        try:
            yield kwargs
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                            "WHERE slot_name = %s", (SLOT,))


def write_spec(directory: Path) -> ResolvedSpec:
    path = directory / "pipeline.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: verify_guard
        state_dir: state
        source: {{type: postgres, database: {DATABASE}, user: postgres, schema: shop}}
        tables:
          - name: accounts
            primary_key: [id]
            columns:
              - {{name: id, type: bigint, nullable: false}}
              - {{name: balance, type: 'numeric(18,2)'}}
        lake: {{url: "file://lake", layout: "{{table}}/date={{date}}"}}
        warehouse: {{type: duckdb, path: state/warehouse.duckdb, raw_schema: raw}}
        verify:
          checks:
            - name: balances
              source_sql: select id, balance from {{source_schema}}.accounts
              warehouse_sql: select account_id, balance from analytics.account_balances
        """), encoding="utf-8")
    return load_spec(path, env=None, environ={})


def with_checks(resolved: ResolvedSpec, checks: list[VerifyCheck]) -> ResolvedSpec:
    """The spec with these checks, past validation (a library caller can build one; verify must hold alone)."""
    spec = resolved.spec.model_copy(update={"verify": Verify(checks=[*resolved.spec.verify.checks, *checks])})
    return dataclasses.replace(resolved, spec=spec)


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[ResolvedSpec]:
    """The spec, and a DuckDB warehouse with raw tables and analytics.account_balances matching the source."""
    resolved = write_spec(tmp_path)
    adapter = DuckDBAdapter(resolved, resolved.spec.warehouse)
    adapter.setup()
    adapter.execute("CREATE SCHEMA analytics")
    adapter.execute("CREATE TABLE analytics.account_balances (account_id BIGINT, balance DECIMAL(18,2))")
    for row in ROWS:
        adapter.execute("INSERT INTO analytics.account_balances VALUES (?, ?)", list(row))
    adapter.close()
    yield resolved


def warehouse_rows(resolved: ResolvedSpec) -> int:
    con = duckdb.connect(str(resolved.resolve_path(resolved.spec.warehouse.path)))
    try:
        return con.execute("SELECT count(*) FROM analytics.account_balances").fetchone()[0]
    finally:
        con.close()


def slots(source: dict) -> list[str]:
    with psycopg2.connect(**source) as conn, conn.cursor() as cur:
        cur.execute("SELECT slot_name FROM pg_replication_slots ORDER BY 1")
        return [r[0] for r in cur.fetchall()]


def test_hostile_checks_are_refused_and_change_nothing(source: dict, warehouse: ResolvedSpec,
                                                       tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text(f"line\n{SECRET_FILE_MARKER}\n", encoding="utf-8")
    resolved = with_checks(warehouse, [
        VerifyCheck(name="delete in a CTE", source_sql="select count(*) from {source_schema}.accounts",
                    warehouse_sql="with gone as (delete from analytics.account_balances returning *) "
                                  "select count(*) from gone"),
        VerifyCheck(name="slot drop", source_sql=f"select pg_drop_replication_slot('{SLOT}')",
                    warehouse_sql="select null"),
        VerifyCheck(name="source file read", source_sql=f"select pg_read_file('{secret}')",
                    warehouse_sql="select 1"),
        VerifyCheck(name="warehouse file read", source_sql="select 1",
                    warehouse_sql=f"select * from read_csv('{secret}')"),
    ])
    rows_before, slots_before = warehouse_rows(resolved), slots(source)
    assert rows_before == len(ROWS) and SLOT in slots_before

    report = verify(resolved, source)

    assert warehouse_rows(resolved) == rows_before  # nothing deleted
    assert slots(source) == slots_before  # the slot is still there
    results = {c.name: c for c in report.checks}
    assert results["balances"].ok, results["balances"]  # the read-only connections still verify
    expected = {"delete in a CTE": "warehouse_sql refused: it contains DELETE",
                "slot drop": "source_sql refused: it calls pg_drop_replication_slot()",
                "source file read": "source_sql refused: it calls pg_read_file()",
                "warehouse file read": "warehouse_sql refused: it calls read_csv()"}
    for name, reason in expected.items():
        check = results[name]
        assert not check.ok and check.error and reason in check.error, check
        assert check.source_rows == check.warehouse_rows == 0  # refused before anything ran
    text = json.dumps(report.to_dict()) + report.format()
    assert SECRET_FILE_MARKER not in text and "root:" not in text


def test_the_source_session_cannot_write_whatever_the_query(source: dict) -> None:
    conn = source_connection(source)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW default_transaction_read_only")
            assert cur.fetchone()[0] == "on"
            cur.execute("SHOW transaction_read_only")
            assert cur.fetchone()[0] == "on"
            cur.execute("SHOW standard_conforming_strings")
            assert cur.fetchone()[0] == "on"
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone()[0] != "0"
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cur.execute("WITH gone AS (DELETE FROM shop.accounts RETURNING *) SELECT count(*) FROM gone")
        conn.rollback()
        conn.autocommit = True  # even outside verify's transaction, the session default stays read-only
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            cur.execute("DELETE FROM shop.accounts")
    finally:
        conn.close()
    with psycopg2.connect(**source) as check, check.cursor() as cur:
        cur.execute("SELECT count(*) FROM shop.accounts")
        assert cur.fetchone()[0] == len(ROWS)


def test_the_read_only_warehouse_refuses_writes_and_file_reads(warehouse: ResolvedSpec, tmp_path: Path) -> None:
    """Past the guard: DuckDB itself, opened by verify's way (read-only, no external access, locked)."""
    secret = tmp_path / "secret.csv"
    secret.write_text(f"line\n{SECRET_FILE_MARKER}\n", encoding="utf-8")
    adapter = warehouse.spec.warehouse.connect(warehouse, read_only=True)
    assert isinstance(adapter, DuckDBAdapter) and not adapter.shared
    try:
        for sql in ["WITH gone AS (DELETE FROM analytics.account_balances RETURNING *) SELECT count(*) FROM gone",
                    "DELETE FROM analytics.account_balances",
                    f"SELECT * FROM read_csv('{secret}')",
                    f"SELECT * FROM '{secret}'",
                    "SET enable_external_access = true",
                    "SET lock_configuration = false"]:
            with pytest.raises(duckdb.Error):
                list(adapter.iter_query(sql))
        with pytest.raises(Exception, match="read-only"):
            adapter.execute("DELETE FROM analytics.account_balances")
        assert adapter.query("SELECT current_setting('enable_external_access')") == [(False,)]
    finally:
        adapter.close()
    assert warehouse_rows(warehouse) == len(ROWS)


def test_a_warehouse_this_process_holds_read_write_is_read_in_read_only_transactions(
        warehouse: ResolvedSpec) -> None:
    """dbt-duckdb's connection stays open in the process after a transform: DuckDB then cannot open the file
    read-only, so verify shares the database and runs every query in a READ ONLY transaction."""
    writer = duckdb.connect(str(warehouse.resolve_path(warehouse.spec.warehouse.path)))
    try:
        adapter = warehouse.spec.warehouse.connect(warehouse, read_only=True)
        assert isinstance(adapter, DuckDBAdapter) and adapter.shared
        try:
            with pytest.raises(duckdb.Error, match="read-only"):
                list(adapter.iter_query("WITH gone AS (DELETE FROM analytics.account_balances RETURNING *) "
                                        "SELECT count(*) FROM gone"))
            assert adapter.query("SELECT count(*) FROM analytics.account_balances") == [(len(ROWS),)]
        finally:
            adapter.close()
        assert writer.execute("SELECT count(*) FROM analytics.account_balances").fetchone()[0] == len(ROWS)
    finally:
        writer.close()


def test_verify_closes_a_callers_read_write_adapter_and_opens_its_own(
        source: dict, warehouse: ResolvedSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `Pipeline.verify` passes: a read-write adapter; verify closes it and reads through its own read-only
    one, which then gets the file to itself (read-only open, no file access), not a share of the writer's."""
    opened: list[DuckDBAdapter] = []
    original = DuckDBWarehouse.connect

    def spy(self: DuckDBWarehouse, resolved: ResolvedSpec, *, read_only: bool = False) -> Any:
        adapter = original(self, resolved, read_only=read_only)
        opened.append(adapter)
        return adapter

    monkeypatch.setattr(DuckDBWarehouse, "connect", spy)
    writer = DuckDBAdapter(warehouse, warehouse.spec.warehouse)
    report = verify(warehouse, source, writer)
    writer.close()  # the caller's own close stays harmless
    assert {c.name: c.ok for c in report.checks}["balances"]
    assert [(a.read_only, a.shared) for a in opened] == [(True, False)]
    assert warehouse_rows(warehouse) == len(ROWS)
