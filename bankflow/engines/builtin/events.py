"""Render a pgoutput change as the exact Debezium 3.6 change event (JsonConverter, schemas disabled).

Matches the connector settings bankflow renders for the `stack` environment: ``decimal.handling.mode=string``
(numeric → "123.45"), ``time.precision.mode=adaptive_time_microseconds`` (date → days since epoch, time →
µs since midnight, timestamp → µs since epoch), timestamptz → ISO-8601 UTC string ("…T12:34:56.123456Z"),
uuid/json/jsonb → string, bytea → base64 string, boolean → true/false.

The built-in engine's stream does not go through these events (its fast path appends the text values to
column batches directly); this is the reference image of a change that both engines' data must equal, and the
tests use it to prove that both paths into `TableBatch` (Debezium JSON from Kafka, pgoutput text) yield the
same Arrow table.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timezone
from datetime import time as dtime
from typing import Any

from bankflow.spec.models import Table
from bankflow.spec.types import PgType

DEBEZIUM_VERSION = "3.6.0.Final"
_EPOCH = datetime(1970, 1, 1)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_INT_KINDS = ("smallint", "integer", "bigint")
_STRING_KINDS = ("text", "varchar", "char", "uuid", "json", "jsonb", "numeric")


def _micros(delta: Any) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso_utc(value: datetime) -> str:
    """Debezium's ZonedTimestamp text: ISO date 'T' time, fraction only as long as needed, 'Z'."""
    value = value.astimezone(timezone.utc)
    text = (f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
            f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}")
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def _time_us(text: str) -> int:
    t = dtime.fromisoformat(text)
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


def _bytea(text: str) -> str:
    if not text.startswith("\\x"):
        return text
    return base64.b64encode(bytes.fromhex(text[2:])).decode()


# Postgres type kind → (its text → its Debezium JSON value); a kind not here is passed through as text.
_CONVERTERS: dict[str, Callable[[str], Any]] = {
    **{kind: str for kind in _STRING_KINDS},
    **{kind: int for kind in _INT_KINDS},
    "boolean": {"t": True, "f": False}.__getitem__,
    "timestamptz": lambda text: iso_utc(datetime.fromisoformat(text)),
    "timestamp": lambda text: _micros(datetime.fromisoformat(text) - _EPOCH),
    "date": lambda text: date.fromisoformat(text).toordinal() - _EPOCH_ORDINAL,
    "time": _time_us,
    "bytea": _bytea,
    "real": float,
    "double precision": float,
}


def text_to_debezium(pg: PgType, value: Any) -> Any:
    """One Postgres text value (bytes or str, as pgoutput/COPY send it) → its Debezium JSON value.

    A value that has no Debezium image here (e.g. 'infinity') is passed through as text, so the batch
    dead-letters it with a reason instead of guessing.
    """
    if value is None:
        return None
    text = bytes(value).decode() if isinstance(value, (bytes, bytearray, memoryview)) else str(value)
    convert = _CONVERTERS.get(pg.kind)
    if convert is None:
        return text
    try:
        return convert(text)
    except (ValueError, KeyError, OverflowError):
        return text


def row_to_debezium(table: Table, values: Sequence[Any] | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A row of text values (spec column order, or a name → text mapping) → Debezium row image."""
    if values is None:
        return None
    if isinstance(values, Mapping):
        return {c.name: text_to_debezium(c.pg_type, values.get(c.name)) for c in table.columns}
    return {c.name: text_to_debezium(c.pg_type, v) for c, v in zip(table.columns, values, strict=True)}


def to_debezium_event(
    table: Table,
    op: str,
    *,
    before: Sequence[Any] | Mapping[str, Any] | None,
    after: Sequence[Any] | Mapping[str, Any] | None,
    lsn: int,
    xid: int | None,
    commit_ts_us: int | None,
    topic_prefix: str,
    database: str,
    schema: str,
    snapshot: str = "false",
    last_commit_lsn: int | None = None,
    now_us: int | None = None,
) -> dict[str, Any]:
    """The Debezium 3.6 Postgres connector's value for one change (op c/u/d/r).

    `before`/`after` are text values as pgoutput sends them; `commit_ts_us` is the commit time (source.ts_*),
    `now_us` the processing time (top-level ts_*; defaults to now).
    """
    if now_us is None:
        now_us = time.time_ns() // 1000
    ts_us = commit_ts_us if commit_ts_us is not None else now_us
    source = {
        "version": DEBEZIUM_VERSION,
        "connector": "postgresql",
        "name": topic_prefix,
        "ts_ms": ts_us // 1000,
        "snapshot": snapshot,
        "db": database,
        "sequence": json.dumps([None if last_commit_lsn is None else str(last_commit_lsn), str(lsn)]),
        "ts_us": ts_us,
        "ts_ns": ts_us * 1000,
        "schema": schema,
        "table": table.name,
        "txId": xid,
        "lsn": lsn,
        "xmin": None,
    }
    return {
        "before": row_to_debezium(table, before),
        "after": row_to_debezium(table, after),
        "source": source,
        "transaction": None,
        "op": op,
        "ts_ms": now_us // 1000,
        "ts_us": now_us,
        "ts_ns": now_us * 1000,
    }
