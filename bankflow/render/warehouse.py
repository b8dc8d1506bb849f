"""Warehouse SQL per dialect: raw DDL (typed source columns + CDC metadata) and the load statements.

The loader executes exactly these strings, so `bankflow plan --out` shows what `apply` runs. Files are always an
explicit list (never a PATTERN or a re-listing of the bucket): bankflow's ledger decides what is new.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bankflow.render.sql import quote_duckdb, quote_snowflake, string_literal
from bankflow.render.templating import render_template
from bankflow.spec.models import SnowflakeWarehouse, Table
from bankflow.spec.types import CDC_COLUMNS, PgType

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec

COPY_FILES_PER_STATEMENT = 1000  # Snowflake's limit on FILES = (...)
FILES_PLACEHOLDER = "<files pending in the lake>"
REDACTED = "****"


def raw_columns(table: Table, dialect: str) -> list[tuple[str, PgType]]:
    """Source columns then CDC columns. Raw is a change log: every column nullable (deletes may carry keys only)."""
    del dialect
    return [(c.name, c.pg_type) for c in table.columns] + list(CDC_COLUMNS)


def _type(pg_type: PgType, dialect: str) -> str:
    return pg_type.snowflake if dialect == "snowflake" else pg_type.duckdb


def qualified_raw_table(resolved: ResolvedSpec, table: Table) -> str:
    warehouse = resolved.spec.warehouse
    if isinstance(warehouse, SnowflakeWarehouse):
        return ".".join(quote_snowflake(p) for p in (warehouse.database, warehouse.raw_schema, table.raw_name))
    return f"{quote_duckdb(warehouse.raw_schema)}.{quote_duckdb(table.raw_name)}"


def _snowflake_object(warehouse: SnowflakeWarehouse, name: str) -> str:
    return ".".join(quote_snowflake(p) for p in (warehouse.database, warehouse.raw_schema, name))


def stage_url(resolved: ResolvedSpec) -> str:
    """The external stage URL: `s3://…/` on AWS, `s3compat://…/` for S3-compatible storage with an endpoint."""
    url = resolved.spec.lake.url
    if resolved.spec.lake.s3_endpoint:
        url = "s3compat://" + url.removeprefix("s3://")
    return url.rstrip("/") + "/"


def render_table_ddl(resolved: ResolvedSpec, table: Table) -> str:
    dialect = resolved.spec.warehouse.type
    quote = quote_snowflake if dialect == "snowflake" else quote_duckdb
    columns = [{"name": quote(name), "type": _type(t, dialect)} for name, t in raw_columns(table, dialect)]
    return render_template(f"{dialect}/raw_table.sql.j2", table=qualified_raw_table(resolved, table),
                           columns=columns)


def setup_statements(resolved: ResolvedSpec, *, reveal: bool) -> list[str]:
    """Schema, file format, stage and raw tables, all idempotent (IF NOT EXISTS)."""
    warehouse = resolved.spec.warehouse
    statements: list[str] = []
    if isinstance(warehouse, SnowflakeWarehouse):
        schema = f"{quote_snowflake(warehouse.database)}.{quote_snowflake(warehouse.raw_schema)}"
        statements.append(f"CREATE SCHEMA IF NOT EXISTS {schema};\n")
        file_format = _snowflake_object(warehouse, warehouse.file_format)
        statements.append(render_template("snowflake/file_format.sql.j2", file_format=file_format))
        lake = resolved.spec.lake
        endpoint = (lake.s3_endpoint or "").split("://", 1)[-1].rstrip("/")
        use_integration = warehouse.stage_credentials == "integration"
        statements.append(render_template(
            "snowflake/stage.sql.j2",
            stage=_snowflake_object(warehouse, warehouse.stage),
            url=stage_url(resolved).replace("'", "''"),
            endpoint=endpoint.replace("'", "''"),
            storage_integration=quote_snowflake(warehouse.storage_integration)
            if use_integration and warehouse.storage_integration else None,
            aws_key_id=(lake.s3_key or "").replace("'", "''") if reveal else REDACTED,
            aws_secret_key=(lake.s3_secret or "").replace("'", "''") if reveal else REDACTED,
            file_format=file_format.replace("'", "''"),
        ))
    else:
        statements.append(f"CREATE SCHEMA IF NOT EXISTS {quote_duckdb(warehouse.raw_schema)};\n")
    statements.extend(render_table_ddl(resolved, table) for table in resolved.spec.tables)
    return statements


def load_statements(resolved: ResolvedSpec, table: Table, files: Sequence[str] | None) -> list[str]:
    """COPY/INSERT statements for `files` (stage-relative keys on Snowflake, full URLs/paths on DuckDB).

    `files=None` renders one statement with a placeholder (plan without a reachable lake).
    """
    warehouse = resolved.spec.warehouse
    target = qualified_raw_table(resolved, table)
    chunks: list[Sequence[str] | None] = (
        [None] if files is None
        else [files[i:i + COPY_FILES_PER_STATEMENT] for i in range(0, len(files), COPY_FILES_PER_STATEMENT)]
    )
    statements = []
    for chunk in chunks:
        listed = FILES_PLACEHOLDER if chunk is None else ", ".join(string_literal(f) for f in chunk)
        if isinstance(warehouse, SnowflakeWarehouse):
            statements.append(render_template(
                "snowflake/copy_into.sql.j2", table=target, stage=_snowflake_object(warehouse, warehouse.stage),
                files=listed, file_format=_snowflake_object(warehouse, warehouse.file_format)))
        else:
            statements.append(render_template("duckdb/load.sql.j2", table=target, files=listed))
    return statements


def add_column_statement(resolved: ResolvedSpec, table: Table, column: str, pg_type: PgType) -> str:
    """Schema drift: a column that new lake files carry and the raw table lacks."""
    dialect = resolved.spec.warehouse.type
    quote = quote_snowflake if dialect == "snowflake" else quote_duckdb
    return render_template(f"{dialect}/add_column.sql.j2", table=qualified_raw_table(resolved, table),
                           column=quote(column), type=_type(pg_type, dialect))


def render_setup_sql(resolved: ResolvedSpec, *, reveal: bool = False) -> str:
    return "\n".join(setup_statements(resolved, reveal=reveal))


def render_load_sql(resolved: ResolvedSpec, files_by_table: dict[str, list[str]] | None) -> str:
    parts = []
    for table in resolved.spec.tables:
        files = None if files_by_table is None else files_by_table.get(table.name, [])
        if files == []:
            parts.append(f"-- {table.name}: no pending files\n")
            continue
        parts.extend(load_statements(resolved, table, files))
    return "\n".join(parts)
