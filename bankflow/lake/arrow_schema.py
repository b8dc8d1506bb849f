"""Spec tables as Arrow schemas: the exact, typed image of every source column plus the CDC metadata.

`bankflow.spec.types` describes types as strings so `bankflow validate` never imports pyarrow; this module is
the one place those strings become `pa.DataType`s.
"""

from __future__ import annotations

import re

import pyarrow as pa

from bankflow.spec.models import Table
from bankflow.spec.types import CDC_COLUMNS, PgType

_SIMPLE: dict[str, pa.DataType] = {
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "binary": pa.binary(),
    "date32": pa.date32(),
    "time64[us]": pa.time64("us"),
    "timestamp[us]": pa.timestamp("us"),
    "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
}
_DECIMAL_RE = re.compile(r"^decimal128\((\d+),(\d+)\)$")

# CDC columns that are always present; _tx_id/_source_ts may be unknown (e.g. an event without source info).
_CDC_REQUIRED = {"_op", "_lsn", "_file"}


def arrow_type(pg_type: PgType) -> pa.DataType:
    """The Arrow type of a Postgres column type (numeric → decimal128(p,s), never a float)."""
    text = pg_type.arrow
    if text in _SIMPLE:
        return _SIMPLE[text]
    match = _DECIMAL_RE.match(text)
    if match:
        return pa.decimal128(int(match.group(1)), int(match.group(2)))
    raise ValueError(f"no Arrow type for {pg_type.sql!r} ({text!r})")


def source_fields(table: Table) -> list[pa.Field]:
    """The source columns in spec order.

    With REPLICA IDENTITY DEFAULT a delete carries only the key, so non-key columns of such tables are
    nullable in the lake even when NOT NULL in the source (the delete row has no value for them).
    """
    keys = set(table.primary_key)
    key_only_deletes = table.replica_identity == "default"
    fields = []
    for column in table.columns:
        nullable = column.nullable or (key_only_deletes and column.name not in keys)
        fields.append(pa.field(column.name, arrow_type(column.pg_type), nullable=nullable))
    return fields


def cdc_fields() -> list[pa.Field]:
    return [pa.field(name, arrow_type(pg), nullable=name not in _CDC_REQUIRED) for name, pg in CDC_COLUMNS]


def table_arrow_schema(table: Table) -> pa.Schema:
    """Source columns (with their nullability), then `_op`, `_lsn`, `_tx_id`, `_source_ts`, `_file`."""
    return pa.schema([*source_fields(table), *cdc_fields()])
