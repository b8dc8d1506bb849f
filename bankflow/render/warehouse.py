"""Warehouse SQL for a spec: raw DDL (typed source columns + CDC metadata) and the load statements.

The loader executes exactly these strings, so `bankflow plan --out` shows what `apply` runs. Files are always an
explicit list (never a PATTERN or a re-listing of the bucket): bankflow's ledger decides what is new. The SQL text
itself is the warehouse dialect's (`bankflow/warehouses/<type>/dialect.py`); this module only chunks and joins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bankflow.warehouses.base import FILES_PLACEHOLDER, REDACTED, Dialect, raw_columns

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table
    from bankflow.spec.types import PgType

__all__ = ["FILES_PLACEHOLDER", "REDACTED", "add_column_statement", "load_statements", "qualified_raw_table",
           "raw_columns", "render_load_sql", "render_setup_sql", "setup_statements"]


def dialect(resolved: ResolvedSpec) -> Dialect:
    return resolved.spec.warehouse.dialect()


def qualified_raw_table(resolved: ResolvedSpec, table: Table) -> str:
    return dialect(resolved).raw_table(table)


def setup_statements(resolved: ResolvedSpec, *, reveal: bool) -> list[str]:
    """Schema (stage, file format) and raw tables, all idempotent (IF NOT EXISTS)."""
    return dialect(resolved).setup_statements(resolved, reveal=reveal)


def chunked(files: Sequence[str], size: int) -> list[Sequence[str]]:
    return [files[i:i + size] for i in range(0, len(files), size)]


def load_statements(resolved: ResolvedSpec, table: Table, files: Sequence[str] | None) -> list[str]:
    """Load statements for `files` (as the adapter names them), at most `files_per_statement` each.

    `files=None` renders one statement with a placeholder (plan without a reachable lake).
    """
    sql = dialect(resolved)
    if files is None:
        return [sql.load_statement(table, None)]
    size = resolved.spec.warehouse.capabilities.files_per_statement
    return [sql.load_statement(table, chunk) for chunk in chunked(files, size)]


def add_column_statement(resolved: ResolvedSpec, table: Table, column: str, pg_type: PgType) -> str:
    """Schema drift: a column that new lake files carry and the raw table lacks."""
    return dialect(resolved).add_column_statement(table, column, pg_type)


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
