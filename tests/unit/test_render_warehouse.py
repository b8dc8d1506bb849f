"""Warehouse SQL: Snowflake statements parse, COPY file lists are chunked, types are exact per column, and the
DuckDB SQL runs as rendered."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from bankflow.render import render_all
from bankflow.render.warehouse import (
    FILES_PLACEHOLDER,
    add_column_statement,
    load_statements,
    render_load_sql,
    render_setup_sql,
    setup_statements,
)
from bankflow.spec.loader import load_spec
from bankflow.spec.types import parse_pg_type
from tests.specs.support import INVENTORY, load_case

SNOWFLAKE_CASES = ["banking-stack", "inventory-cloud"]


def parse_snowflake(sql: str) -> list[exp.Expression]:
    statements = [s for s in sqlglot.parse(sql, read="snowflake") if s is not None]
    for statement in statements:
        # sqlglot falls back to an opaque Command for what it cannot parse: that is not "parses".
        assert not isinstance(statement, exp.Command), statement.sql()
    return statements


@pytest.mark.parametrize("case", SNOWFLAKE_CASES)
@pytest.mark.parametrize("reveal", [False, True])
def test_snowflake_setup_parses(case: str, reveal: bool) -> None:
    resolved = load_case(case)
    statements = setup_statements(resolved, reveal=reveal)
    parsed = parse_snowflake("\n".join(statements))
    assert len(parsed) == len(statements) == 3 + len(resolved.spec.tables)
    kinds = [p.args.get("kind") for p in parsed]
    assert kinds == ["SCHEMA", "FILE FORMAT", "STAGE", *["TABLE"] * len(resolved.spec.tables)]
    tables = [p for p in parsed if p.args.get("kind") == "TABLE"]
    for table, parsed_table in zip(resolved.spec.tables, tables, strict=True):
        names = [c.name for c in parsed_table.find_all(exp.ColumnDef)]
        assert names == [c.name.upper() for c in table.columns] + ["_OP", "_LSN", "_TX_ID", "_SOURCE_TS", "_FILE"]


@pytest.mark.parametrize("case", SNOWFLAKE_CASES)
def test_snowflake_copy_with_files_parses_and_chunks(case: str) -> None:
    resolved = load_case(case)
    table = resolved.spec.tables[0]
    files = [f"{table.name}/date=2024-01-{1 + i % 28:02d}/p0-{i:08d}.parquet" for i in range(2500)]
    statements = load_statements(resolved, table, files)
    assert len(statements) == 3
    listed: list[str] = []
    for statement in statements:
        (copy,) = parse_snowflake(statement)
        assert isinstance(copy, exp.Copy)
        assert copy.this.name == table.raw_name.upper()
        chunk = [f.strip().strip("'") for f in statement.split("FILES = (", 1)[1].split(")", 1)[0].split(",")]
        assert len(chunk) <= resolved.spec.warehouse.capabilities.files_per_statement
        listed.extend(chunk)
    assert listed == files  # every file once, in order
    assert [s.count(".parquet'") for s in statements] == [1000, 1000, 500]


def test_snowflake_copy_quotes_file_names() -> None:
    resolved = load_case("banking-stack")
    (statement,) = load_statements(resolved, resolved.spec.tables[0], ["a/o'brien.parquet", "b/c.parquet"])
    (copy,) = parse_snowflake(statement)
    assert "FILES = ('a/o''brien.parquet', 'b/c.parquet')" in statement
    literals = [lit.this for lit in copy.find_all(exp.Literal) if lit.is_string]
    assert "a/o'brien.parquet" in literals


@pytest.mark.parametrize("case", SNOWFLAKE_CASES)
def test_snowflake_add_column_parses(case: str) -> None:
    resolved = load_case(case)
    for text in ("numeric(38,10)", "timestamptz", "varchar(40)", "jsonb", "uuid", "bytea"):
        statement = add_column_statement(resolved, resolved.spec.tables[-1], "added", parse_pg_type(text))
        (alter,) = parse_snowflake(statement)
        assert isinstance(alter, exp.Alter)


@pytest.mark.parametrize("case", ["banking-local", "banking-stack", "inventory-local", "inventory-cloud"])
def test_plan_without_a_lake_shows_the_placeholder(case: str) -> None:
    resolved = load_case(case)
    load_sql = render_all(resolved).files[f"warehouse/{resolved.spec.warehouse.type}/load.sql"]
    assert load_sql.count(FILES_PLACEHOLDER) == len(resolved.spec.tables)
    assert render_load_sql(resolved, None) == load_sql
    concrete = render_load_sql(resolved, {t.name: [f"{t.name}/x.parquet"] for t in resolved.spec.tables})
    assert FILES_PLACEHOLDER not in concrete


def test_no_pending_files_renders_a_comment_only() -> None:
    resolved = load_case("inventory-cloud")
    assert render_load_sql(resolved, {}) == "-- products: no pending files\n\n-- stock_levels: no pending files\n"


# ---------------------------------------------------------------- exact types per column (inventory)

INVENTORY_TYPES = {
    # column: (DuckDB, Snowflake, Arrow)
    "product_id": ("UUID", "VARCHAR(36)", "string"),
    "sku": ("VARCHAR", "VARCHAR(40)", "string"),
    "title": ("VARCHAR", "VARCHAR", "string"),
    "unit_cost": ("DECIMAL(38,10)", "NUMBER(38,10)", "decimal128(38,10)"),
    "is_active": ("BOOLEAN", "BOOLEAN", "bool"),
    "launched_on": ("DATE", "DATE", "date32"),
    "attributes": ("JSON", "VARIANT", "string"),
    "thumbnail": ("BLOB", "BINARY", "binary"),
    "weight_grams": ("INTEGER", "NUMBER(10,0)", "int32"),
    "updated_at": ("TIMESTAMP", "TIMESTAMP_NTZ(6)", "timestamp[us]"),
    "bin_code": ("SMALLINT", "NUMBER(5,0)", "int16"),
    "quantity": ("BIGINT", "NUMBER(19,0)", "int64"),
    "ratio": ("DOUBLE", "FLOAT", "float64"),
    "counted_at": ("TIMESTAMPTZ", "TIMESTAMP_TZ(6)", "timestamp[us, UTC]"),
}
CDC_TYPES = {
    "_op": ("VARCHAR", "VARCHAR(1)", "string"),
    "_lsn": ("BIGINT", "NUMBER(19,0)", "int64"),
    "_tx_id": ("BIGINT", "NUMBER(19,0)", "int64"),
    "_source_ts": ("TIMESTAMPTZ", "TIMESTAMP_TZ(6)", "timestamp[us, UTC]"),
    "_file": ("VARCHAR", "VARCHAR", "string"),
}


def _ddl_columns(sql: str, table: str) -> dict[str, str]:
    block = sql.split(f"{table} (\n", 1)[1].split("\n);", 1)[0]
    pairs = [line.strip().rstrip(",").split(" ", 1) for line in block.splitlines()]
    return {name.strip('"').lower(): kind for name, kind in pairs}


def test_inventory_duckdb_types() -> None:
    sql = render_setup_sql(load_case("inventory-local"))
    columns = {**_ddl_columns(sql, '"landing"."products"'), **_ddl_columns(sql, '"landing"."stock"')}
    expected = {name: types[0] for name, types in {**INVENTORY_TYPES, **CDC_TYPES}.items()}
    assert columns == expected


def test_inventory_snowflake_types() -> None:
    sql = render_setup_sql(load_case("inventory-cloud"))
    columns = {**_ddl_columns(sql, '"INVENTORY"."LANDING"."PRODUCTS"'),
               **_ddl_columns(sql, '"INVENTORY"."LANDING"."STOCK"')}
    expected = {name: types[1] for name, types in {**INVENTORY_TYPES, **CDC_TYPES}.items()}
    assert columns == expected


def test_inventory_raw_table_override_and_schema() -> None:
    sql = render_setup_sql(load_case("inventory-local"))
    assert 'CREATE SCHEMA IF NOT EXISTS "landing";' in sql
    assert 'CREATE TABLE IF NOT EXISTS "landing"."stock" (' in sql
    assert "stock_levels" not in sql


# ---------------------------------------------------------------- DuckDB runs what is rendered

def test_duckdb_setup_and_load_run(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    import datetime
    import decimal
    import uuid

    resolved = load_spec(INVENTORY, env="local", environ={})
    con = duckdb.connect()
    for statement in setup_statements(resolved, reveal=False):
        con.execute(statement)
    for statement in setup_statements(resolved, reveal=False):  # idempotent
        con.execute(statement)
    described = {row[0]: row[1] for row in con.execute('DESCRIBE "landing"."products"').fetchall()}
    assert described["unit_cost"] == "DECIMAL(38,10)"
    assert described["product_id"] == "UUID"
    assert described["updated_at"] == "TIMESTAMP"

    # The spec's layout: hive-style `dt=…` directories (which must not turn into an extra column), and a quote.
    directory = tmp_path / "inv" / "products" / "dt=2024-05-01" / "o'brien"
    directory.mkdir(parents=True)
    product = uuid.UUID("12345678-1234-5678-1234-567812345678")
    batch = pa.table({
        "product_id": pa.array([str(product)]),
        "sku": pa.array(["SKU-1"]),
        "title": pa.array(["Bolt"]),
        "unit_cost": pa.array([decimal.Decimal("1234567890123456789012345678.0123456789")],
                              pa.decimal128(38, 10)),
        "is_active": pa.array([True]),
        "launched_on": pa.array([datetime.date(2024, 2, 29)]),
        "updated_at": pa.array([datetime.datetime(2024, 5, 1, 12, 0, 0, 123456)], pa.timestamp("us")),
        "_op": pa.array(["c"]),
        "_lsn": pa.array([42], pa.int64()),
    })
    path = directory / "p0-1.parquet"
    pq.write_table(batch, path)
    for statement in load_statements(resolved, resolved.spec.tables[0], [str(path)]):
        con.execute(statement)
    row = con.execute('SELECT product_id, unit_cost, launched_on, updated_at, _op, _lsn, thumbnail '
                      'FROM "landing"."products"').fetchone()
    assert row == (product, decimal.Decimal("1234567890123456789012345678.0123456789"), datetime.date(2024, 2, 29),
                   datetime.datetime(2024, 5, 1, 12, 0, 0, 123456), "c", 42, None)


HOSTILE = "x\\' FILE_FORMAT = (TYPE = CSV) URL = 's3://evil/"


@pytest.mark.parametrize("field", ["url", "s3_endpoint", "s3_key", "s3_secret"])
def test_hostile_lake_strings_stay_inside_their_snowflake_literals(field: str) -> None:
    """A quote or backslash-quote in any string of the stage cannot end its literal and add a property: the stage
    parses to exactly the template's properties, and the literal holds the value as given."""
    import dataclasses

    resolved = load_case("banking-stack")
    lake = resolved.spec.lake
    value = {"url": f"{lake.url}/{HOSTILE}", "s3_endpoint": f"http://minio:9000/{HOSTILE}"}.get(field, HOSTILE)
    # model_copy skips validation on purpose: the dialect must hold even for a value the validators would refuse.
    spec = resolved.spec.model_copy(update={"lake": lake.model_copy(update={field: value})})
    hostile = dataclasses.replace(resolved, spec=spec)
    (stage,) = [s for s in setup_statements(hostile, reveal=True) if "CREATE STAGE" in s]
    (parsed,) = parse_snowflake(stage)
    properties = [p.name.upper() if type(p) is exp.Property else type(p).__name__
                  for p in parsed.args["properties"].expressions]
    assert properties == ["URL", "ENDPOINT", "CredentialsProperty", "FileFormatProperty"], properties
    literals = [lit.this for lit in parsed.find_all(exp.Literal) if lit.is_string]
    assert any(HOSTILE.rstrip("/") in text for text in literals), literals
    assert not any(text == "s3://evil/" for text in literals)
