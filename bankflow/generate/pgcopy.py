"""Bulk-load helpers for workloads: ``COPY … FROM STDIN`` in text format.

COPY is the fastest way into PostgreSQL (one statement, one round trip per batch); these helpers only do
the escaping so that a workload cannot produce a corrupt row by accident.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from bankflow.render.sql import quote_pg

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
NULL = "\\N"


def copy_value(value: Any) -> str:
    """Render one value as a COPY text-format field (None → \\N, aware datetimes keep their offset)."""
    if value is None:
        return NULL
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def copy_line(values: Sequence[Any]) -> str:
    return "\t".join(map(copy_value, values)) + "\n"


def copy_data(cursor: Any, table: str, columns: Sequence[str], data: bytes) -> None:
    """COPY an encoded text-format payload into ``table``; the caller owns the transaction.

    Sent as one chunk: psycopg2 takes the GIL back for every chunk it reads, which stalls a writer
    thread behind a busy producer thread.
    """
    statement = f"COPY {quote_pg(table)} ({', '.join(map(quote_pg, columns))}) FROM STDIN"
    cursor.copy_expert(statement, io.BytesIO(data), size=max(len(data), 8192))


def copy_lines(cursor: Any, table: str, columns: Sequence[str], lines: Iterable[str]) -> None:
    """COPY pre-rendered lines (each ending in a newline) into ``table``."""
    copy_data(cursor, table, columns, "".join(lines).encode())


def copy_rows(cursor: Any, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """COPY rows of Python values into ``table`` and return how many were sent."""
    lines = [copy_line(row) for row in rows]
    if lines:
        copy_lines(cursor, table, columns, lines)
    return len(lines)
