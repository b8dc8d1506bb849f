"""Identifier quoting per dialect. Spec identifiers are validated as [a-z_][a-z0-9_]* and quoted again here."""

from __future__ import annotations

from bankflow.spec.models import check_identifier


def quote_pg(name: str) -> str:
    return '"' + check_identifier(name) + '"'


def quote_duckdb(name: str) -> str:
    return '"' + check_identifier(name) + '"'


def quote_snowflake(name: str) -> str:
    """Upper-cased and quoted: the same object as the unquoted name, so dbt and users can write it plainly."""
    return '"' + check_identifier(name.lower()).upper() + '"'


def string_literal(value: str) -> str:
    """A single-quoted SQL string literal (file names, URLs)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
