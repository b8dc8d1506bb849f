"""Postgres (the source's dialect): the one identifier quoter for SQL bankflow runs on the source.

Each warehouse's quoting is its dialect's (`bankflow/warehouses/<type>/dialect.py`).
"""

from __future__ import annotations


def quote_pg(name: str) -> str:
    """A double-quoted Postgres identifier; an embedded quote is doubled, so any name stays one identifier.

    Spec names are validated when the spec loads; quoting is what keeps them one identifier in any statement.
    """
    if "\x00" in name:
        raise ValueError("a Postgres identifier cannot contain a NUL character")
    return '"' + name.replace('"', '""') + '"'
