"""Per-table column batches: the one code path every event source feeds before Parquet.

Two ways in, one way out:

- `append_debezium(event, position)`: a Debezium 3.6 change event as a dict (JsonConverter, schemas disabled,
  ``decimal.handling.mode=string``, ``time.precision.mode=adaptive_time_microseconds``). The Kafka consumer and
  the built-in reader's `iter_events()` produce these.
- the text fast path (`text_sink`, `begin_text_tx`, `append_text_row`): the built-in pgoutput reader appends the
  raw text of each column straight into per-column lists, no per-row dicts.

- `append_debezium_values(values, positions)`: the bulk path for raw message values (JSON bytes) of one stream,
  in order. The C decoder (`_envelope.c`, `_NativeDecoder`) reads them straight into Arrow buffers and stops
  at the first value it does not accept; that value and a few after it go the msgspec way: msgspec decodes them
  strictly into typed structs (`_EnvelopeDecoder`), which become Arrow arrays in one go. Both end in the same
  vectorised casts. A value msgspec rejects (malformed JSON, a wrong JSON type, an unknown column) and a chunk
  with anything else unusual in it (an unknown op, a value that does not cast, a missing NOT NULL value) is
  split until the culprits are isolated, and those go through `append_debezium_value`, the per-event path, so
  dead letters and output stay what it gives.

Values stay in Python lists until `to_arrow`, where each column converts in bulk with Arrow casts (numeric
text → decimal128 exactly, never through float). A bulk cast that fails falls back to value-by-value
conversion to find the culprits; their events go to the dead-letter list with the position and the reason
and the rest of the batch carries on.
"""

from __future__ import annotations

import base64
import binascii
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import msgspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from msgspec.structs import astuple

from bankflow.lake.arrow_schema import arrow_type, table_arrow_schema
from bankflow.lake.positions import LsnPosition
from bankflow.spec.models import Flush, Table
from bankflow.spec.types import PgType

try:  # built with the package (C extension); without it the msgspec path does all the work, slower
    from bankflow.lake import _envelope as _native_envelope
except ImportError:  # pragma: no cover - a source tree that was never built
    _native_envelope = None  # type: ignore[assignment]

_INT_KINDS = ("smallint", "integer", "bigint")
_STRING_KINDS = ("text", "varchar", "char", "uuid", "json", "jsonb")
_TS_UTC = pa.timestamp("us", tz="UTC")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class DeadLetter:
    """An event that could not be converted: kept whole, with where it came from and why."""

    table: str
    position: Any
    reason: str
    event: Any


class _Conversion(Exception):
    """One value failed to convert; the message is the reason recorded in the dead-letter store."""


# ---------------------------------------------------------------- column converters

Converter = Callable[[list[Any]], pa.Array]


def _text_bool(values: list[Any]) -> pa.Array:
    arr = pa.array(values, pa.string())
    ok = pc.is_in(arr, value_set=pa.array(["t", "f"]))
    if not pc.all(pc.or_kleene(ok, pc.is_null(arr))).as_py():
        raise pa.ArrowInvalid("boolean text must be 't' or 'f'")
    return pc.equal(arr, "t")


def _text_time(values: list[Any]) -> pa.Array:
    arr = pa.array(values, pa.string())
    stamped = pc.binary_join_element_wise("1970-01-01 ", arr, "").cast(pa.timestamp("us"))
    return stamped.cast(pa.int64()).cast(pa.time64("us"))


def _text_bytea(values: list[Any]) -> pa.Array:
    out: list[bytes | None] = []
    for value in values:
        if value is None:
            out.append(None)
            continue
        text = value.decode() if isinstance(value, (bytes, bytearray)) else value
        if not text.startswith("\\x"):
            raise pa.ArrowInvalid("bytea text must be in hex format (\\x…); set bytea_output=hex")
        try:
            out.append(bytes.fromhex(text[2:]))
        except ValueError as exc:
            raise pa.ArrowInvalid(f"bad bytea hex: {exc}") from None
    return pa.array(out, pa.binary())


def _json_bytea(values: list[Any]) -> pa.Array:
    out: list[bytes | None] = []
    for value in values:
        if value is None:
            out.append(None)
            continue
        if not isinstance(value, str):
            raise pa.ArrowInvalid(f"bytea must be a base64 string, got {type(value).__name__}")
        try:
            out.append(base64.b64decode(value, validate=True))
        except binascii.Error as exc:
            raise pa.ArrowInvalid(f"bad base64: {exc}") from None
    return pa.array(out, pa.binary())


# Postgres and Debezium (decimal.handling.mode=string) write numerics plainly; pyarrow's decimal cast crashes the
# process on some exponent forms ("0.0E-2000000001"), so anything else is refused before the cast.
_PLAIN_DECIMAL = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$"


def _decimal_text(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """Numeric text → decimal128 exactly (never through float)."""
    plain = pc.match_substring_regex(arr, _PLAIN_DECIMAL)
    if not pc.all(pc.or_kleene(plain, pc.is_null(arr))).as_py():
        raise pa.ArrowInvalid("numeric text must be a plain decimal number: digits, an optional point and sign")
    return arr.cast(target)


def text_converter(pg: PgType) -> Converter:
    """Postgres text output (as pgoutput and COPY send it, session TimeZone=UTC, DateStyle=ISO) → Arrow."""
    target = arrow_type(pg)
    kind = pg.kind
    if kind in _STRING_KINDS:
        return lambda v: pa.array(v, pa.string())
    if kind == "boolean":
        return _text_bool
    if kind == "bytea":
        return _text_bytea
    if kind == "time":
        return _text_time
    if kind == "numeric":
        return lambda v: _decimal_text(pa.array(v, pa.string()), target)
    # ints, floats, date, timestamp, timestamptz ('+00' suffix is accepted)
    return lambda v: pa.array(v, pa.string()).cast(target)


def _json_ints(values: list[Any], arrow: pa.DataType) -> pa.Array:
    """JSON integers only: `pa.array` would truncate 1.5 to 1, and a wrong number must be a dead letter."""
    for value in values:
        if value is not None and type(value) is not int:
            raise pa.ArrowInvalid(f"expected an integer, got {type(value).__name__}")
    return pa.array(values, arrow)


def _json_floats(values: list[Any], arrow: pa.DataType) -> pa.Array:
    """JSON numbers only: `pa.array` would read true as 1.0."""
    for value in values:
        if value is not None and type(value) is not float and type(value) is not int:
            raise pa.ArrowInvalid(f"expected a number, got {type(value).__name__}")
    return pa.array(values, arrow)


def json_converter(pg: PgType) -> Converter:
    """Debezium JSON values (string decimals, ISO timestamptz, epoch-based ints for date/time/timestamp) → Arrow."""
    target = arrow_type(pg)
    kind = pg.kind
    if kind in _INT_KINDS:
        return lambda v: _json_ints(v, target)
    if kind in ("real", "double precision"):
        return lambda v: _json_floats(v, target)
    if kind == "boolean":
        return lambda v: pa.array(v, target)
    if kind in _STRING_KINDS:
        return lambda v: pa.array(v, pa.string())
    if kind == "numeric":
        return lambda v: _decimal_text(pa.array(v, pa.string()), target)
    if kind == "bytea":
        return _json_bytea
    if kind == "date":
        return lambda v: _json_ints(v, pa.int32()).cast(target)
    if kind in ("time", "timestamp"):
        return lambda v: _json_ints(v, pa.int64()).cast(target)
    if kind == "timestamptz":
        return lambda v: pa.array(v, pa.string()).cast(_TS_UTC)
    raise ValueError(f"no Debezium converter for {pg.sql}")


def json_input_type(pg: PgType) -> pa.DataType:
    """The Arrow type a Debezium JSON value of this column is read as (before `json_finish`)."""
    kind = pg.kind
    if kind in _INT_KINDS or kind in ("real", "double precision", "boolean"):
        return arrow_type(pg)
    if kind == "date":
        return pa.int32()
    if kind in ("time", "timestamp"):
        return pa.int64()
    return pa.string()  # text kinds, numeric (decimal.handling.mode=string), bytea (base64), timestamptz (ISO)


def json_python_type(pg: PgType) -> type:
    """The Python type a Debezium JSON value of this column must decode to (msgspec checks it strictly),
    derived from `json_input_type` so the decoder and the Arrow conversion cannot disagree."""
    arrow = json_input_type(pg)
    if pa.types.is_integer(arrow):
        return int
    if pa.types.is_floating(arrow):
        return float
    if pa.types.is_boolean(arrow):
        return bool
    return str


def json_finish(pg: PgType) -> Callable[[pa.Array], pa.Array]:
    """Array of `json_input_type` → the lake type; the same conversions as `json_converter`, vectorised."""
    target = arrow_type(pg)
    kind = pg.kind
    if kind in _INT_KINDS or kind in ("real", "double precision", "boolean") or kind in _STRING_KINDS:
        return lambda a: a
    if kind == "bytea":
        return lambda a: _json_bytea(a.to_pylist())
    if kind == "timestamptz":
        return lambda a: a.cast(_TS_UTC)
    if kind == "numeric":
        return lambda a: _decimal_text(a, target)
    if kind in ("date", "time", "timestamp"):
        return lambda a: a.cast(target)
    raise ValueError(f"no Debezium converter for {pg.sql}")


_OPS = frozenset(("c", "u", "d", "r"))
_SOURCE_FIELDS = ("lsn", "txId", "ts_us", "ts_ms")  # the order of `_EnvelopeDecoder`'s source struct
_SOURCE_STRUCT = pa.struct([(name, pa.int64()) for name in _SOURCE_FIELDS])
_BULK_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError,
                ValueError, KeyError, AttributeError, msgspec.DecodeError, _Conversion)
_BULK_LEAF = 32  # a failing chunk is split in halves down to this size, then goes event by event
_BULK_PIECE = 2048  # values decoded at a time: bounds the decoded events alive at once (memory, cache)


# A number that may not fit a double (an exponent of 3 digits, 100 digits in a row) is refused by orjson, not by
# msgspec when it skips the field. Without the C scan: digits → "0", "E" → "e", "-" → "+", then substring tests.
_NUMBER_SHAPES = bytes.maketrans(b"0123456789E-", b"0000000000e+")
_HUGE_SHAPES = (b"0e000", b"0e+000", b"0" * 100)


class _PerEventOnly(Exception):
    """A value msgspec's typed decoding might judge otherwise than the per-event path (orjson) does."""


def _checked(value: bytes | str) -> bytes | str:
    """The value, unless msgspec might judge it otherwise than orjson: msgspec checks neither the UTF-8 text nor
    the numbers of the fields it skips. The C scan takes about 1.4 µs for a 550-byte value, the Python one 4."""
    # a lone surrogate in a str value becomes invalid UTF-8 here, and so goes to the per-event path
    data = value if type(value) is bytes else value.encode("utf-8", "surrogatepass")  # type: ignore[union-attr]
    if _native_envelope is not None:
        if not _native_envelope.msgspec_safe(data):
            raise _PerEventOnly
        return value
    if not data.isascii():
        data.decode()  # UnicodeDecodeError
    shapes = data.translate(_NUMBER_SHAPES)
    if any(huge in shapes for huge in _HUGE_SHAPES):
        raise _PerEventOnly
    return value


_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, _PerEventOnly)  # msgspec raises UnicodeDecodeError too


class _EnvelopeDecoder:
    """Strict typed decoding of one table's Debezium values with msgspec: what the bulk path reads, nothing more.

    Row images decode into structs of each column's JSON type (`json_python_type`: 1.5 or "3" is not an
    integer) with unknown columns forbidden; `source` keeps lsn, txId, ts_us and ts_ms; other fields are
    skipped without building objects, and `before` stays raw bytes, decoded only for deletes (the only op whose
    row comes from it). This is two to three times faster than `orjson.loads` building dicts. A value it
    rejects is not judged here: it goes through the per-event path, which makes it a row or a dead letter with
    the reason.
    """

    def __init__(self, table: Table) -> None:
        slots = [f"c{i}" for i in range(len(table.columns))]  # column names need not be Python identifiers
        row = msgspec.defstruct(
            "RowImage", [(slot, Optional[json_python_type(c.pg_type)], None)  # noqa: UP045 (runtime type)
                         for slot, c in zip(slots, table.columns, strict=True)],
            rename=dict(zip(slots, (c.name for c in table.columns), strict=True)),
            forbid_unknown_fields=True, gc=False)
        source = msgspec.defstruct(
            "Source", [(name, Optional[int], None) for name in _SOURCE_FIELDS],  # noqa: UP045
            gc=False)
        envelope = msgspec.defstruct(
            "Envelope", [("op", str), ("before", msgspec.Raw, msgspec.Raw(b"null")),
                         ("after", Optional[row], None), ("source", Optional[source], None)],  # noqa: UP045
            gc=False)
        wrapped = msgspec.defstruct("Wrapped", [("payload", envelope)], gc=False)  # schemas.enable=true
        self._decode = msgspec.json.Decoder(envelope).decode
        self._decode_wrapped = msgspec.json.Decoder(wrapped).decode
        self.decode_row = msgspec.json.Decoder(Optional[row]).decode  # noqa: UP045

    def decode_one(self, value: bytes | str) -> Any:
        """The decoded envelope, or None when the value is anything else (the per-event path decides)."""
        try:
            _checked(value)
        except _UNDECODABLE:
            return None
        try:
            return self._decode(value)
        except _UNDECODABLE:
            pass
        try:
            wrapped: Any = self._decode_wrapped(value)
        except _UNDECODABLE:
            return None
        return wrapped.payload

    def decode_all(self, values: Sequence[bytes | str]) -> tuple[list[Any], bool]:
        """(decoded envelopes or None per value, whether all decoded)."""
        decode = self._decode
        try:
            return [decode(_checked(v)) for v in values], True
        except _UNDECODABLE:
            events = [self.decode_one(v) for v in values]
            return events, all(e is not None for e in events)


_NATIVE_KINDS = {int: "i", bool: "b", str: "s"}  # json_python_type → the C decoder's column kind
_NATIVE_REFUSED_RUN = 256  # values the msgspec path takes after one the C decoder refused, before it resumes


class _NativeDecoder:
    """The C decoder for one table: Debezium JSON values → Arrow arrays of `json_input_type`, no Python objects.

    It accepts a strict subset of what msgspec accepts (no floats, no surrogate escapes, no duplicate or escaped
    keys, no schemas-enabled wrapper) and returns how many leading values it decoded; the caller sends the
    rest elsewhere. `available` is False for a table with a column kind it does not read (real, double).
    """

    def __init__(self, table: Table) -> None:
        kinds = [_NATIVE_KINDS.get(json_python_type(c.pg_type)) for c in table.columns]
        self.available = _native_envelope is not None and None not in kinds
        self._kinds = "".join(k or "?" for k in kinds).encode()
        self._names = tuple(c.name.encode() for c in table.columns)
        self._input_types = [json_input_type(c.pg_type) for c in table.columns]

    def decode(self, values: list[bytes | str]) -> tuple[int, list[pa.Array], int | None]:
        """(how many leading values decoded, their column arrays: the table's in `json_input_type`, then _op,
        _lsn, _tx_id and the source ts_us as int64, first ts_us)."""
        count, columns, ops, lsn, tx, ts = _native_envelope.decode(values, self._kinds, self._names)
        if not count:
            return 0, [], None
        arrays: list[pa.Array] = []
        for kind, input_type, column in zip(self._kinds, self._input_types, columns, strict=True):
            if kind == ord("s"):
                valid, offsets, data, nulls = column
                arr = pa.Array.from_buffers(pa.string(), count, [_buffer(valid), pa.py_buffer(offsets),
                                                                 pa.py_buffer(data)], null_count=nulls)
            elif kind == ord("b"):
                valid, data, nulls = column
                arr = pa.Array.from_buffers(pa.bool_(), count, [_buffer(valid), pa.py_buffer(data)],
                                            null_count=nulls)
            else:
                arr = _int64s(count, column)
                if input_type != pa.int64():
                    arr = arr.cast(input_type)  # safe: an out-of-range value raises, the chunk goes elsewhere
            arrays.append(arr)
        ts_us = _int64s(count, ts)
        arrays += [pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(ops[0]), pa.py_buffer(ops[1])]),
                   _int64s(count, (None, lsn, 0)), _int64s(count, tx), ts_us]
        return count, arrays, ts_us[0].as_py()


def _buffer(data: bytes | None) -> pa.Buffer | None:
    return None if data is None else pa.py_buffer(data)


def _int64s(count: int, column: tuple[bytes | None, bytes, int]) -> pa.Array:
    valid, data, nulls = column
    return pa.Array.from_buffers(pa.int64(), count, [_buffer(valid), pa.py_buffer(data)], null_count=nulls)


class _Malformed:
    """A message value that is not JSON: its dead-letter reason and text."""

    __slots__ = ("reason", "text")

    def __init__(self, reason: str, text: str) -> None:
        self.reason = reason
        self.text = text


def _parse(value: bytes | str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        text = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray, memoryview)) else value
        return _Malformed(f"malformed JSON: {exc}", str(text))


def _unwrap(event: Any) -> Any:
    """JsonConverter with schemas.enable=true wraps the event in {"schema": …, "payload": …}."""
    if type(event) is dict and "op" not in event and type(event.get("payload")) is dict:
        return event["payload"]
    return event


def _convert_column(convert: Converter, values: list[Any], name: str, nullable: bool,
                    bad: dict[int, str]) -> pa.Array:
    """Bulk convert; on failure find the bad values one by one, null them, record the rows, convert again."""
    try:
        arr = convert(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError,
            ValueError):
        values = list(values)
        for i, value in enumerate(values):
            if value is None:
                continue
            try:
                convert([value])
            except Exception as exc:
                shown = value.decode(errors="replace") if isinstance(value, bytes) else value
                bad.setdefault(i, f"column {name!r}: cannot convert {shown!r}: {exc}")
                values[i] = None
        arr = convert(values)
    if not nullable and arr.null_count:
        for i in pc.indices_nonzero(arr.is_null()).to_pylist():
            bad.setdefault(i, f"column {name!r} is NOT NULL but the event has no value for it")
    return arr


# ---------------------------------------------------------------- pending rows (one input mode at a time)

class _Chunk:
    """Converted rows: the source-column arrays and _op, _lsn, _tx_id, _source_ts."""

    def __init__(self, arrays: list[pa.Array]) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays[0]) if self.arrays else 0


class TableBatch:
    """Rows for one table, accumulated until the flush policy (or a replay cut) turns them into a file.

    `stream` names the sequence of files this batch belongs to in the file key (the built-in reader uses the
    table name, the Kafka consumer the topic); `schema` and `topic` fill the lake layout placeholders.
    """

    def __init__(self, table: Table, *, stream: str | None = None, schema: str = "public",
                 topic: str | None = None) -> None:
        self.table = table
        self.stream = stream or table.name
        self.schema_name = schema
        self.topic = topic or table.name
        self.arrow_schema = table_arrow_schema(table)
        self.names = [c.name for c in table.columns]
        self._index = {name: i for i, name in enumerate(self.names)}
        self._nullable = [f.nullable for f in self.arrow_schema][: len(self.names)]
        self._text_conv = [text_converter(c.pg_type) for c in table.columns]
        self._json_conv = [json_converter(c.pg_type) for c in table.columns]
        self._json_finish = [json_finish(c.pg_type) for c in table.columns]
        self._row_struct = pa.struct([pa.field(f"c{i}", json_input_type(c.pg_type))
                                      for i, c in enumerate(table.columns)])
        self._envelopes: _EnvelopeDecoder | None = None  # built on first bulk use
        self._native: _NativeDecoder | None = None  # likewise
        self._reset()

    # ---- state

    def _reset(self) -> None:
        self._mode: str | None = None
        self._chunks: list[_Chunk] = []
        self._chunk_rows = 0
        self.dead_letters: list[DeadLetter] = []
        self.approx_bytes = 0
        self._other_events = 0  # converted rows and events dead-lettered on arrival
        self._started: float | None = None
        self._first: Any = None
        self._last_other: Any = None  # last position not in the pending rows
        self._first_ts: int | None = None
        self._clear_pending()

    def _clear_pending(self) -> None:
        n = len(self.names)
        self.cols: list[list[Any]] = [[] for _ in range(n)]
        self.ops: list[str] = []
        self.lsns: list[int] = []
        # text mode: runs of rows sharing a transaction:
        # (first row, xid, commit ts µs, commit lsn, _lsn override for snapshot rows or None)
        self.tx_runs: list[tuple[int, int | None, int | None, int, int | None]] = []
        self._run_starts: list[int] = []
        # json mode: per-row metadata, positions and the original events (for dead letters)
        self.tx_ids: list[int | None] = []
        self.ts_us: list[int | None] = []
        self.positions: list[Any] = []
        self.raw_events: list[dict[str, Any]] = []

    @property
    def rows(self) -> int:
        """Rows in the batch (dead-lettered events are not rows)."""
        return self._chunk_rows + len(self.ops)

    def __len__(self) -> int:
        return self.rows

    @property
    def events(self) -> int:
        """Events in the batch, including dead-lettered ones (they count for the position range)."""
        return self._other_events + len(self.ops)

    @property
    def empty(self) -> bool:
        return self._first is None

    @property
    def first_position(self) -> Any:
        return self._first

    @property
    def last_position(self) -> Any:
        last = self._last_other
        if self.ops:
            row_last = self.positions[-1] if self._mode == "json" else LsnPosition(self.tx_runs[-1][3], self.lsns[-1])
            if last is None or row_last > last:
                last = row_last
        return last

    @property
    def first_source_ts_us(self) -> int | None:
        """Commit time of the first event: fills `{date}` in the layout (deterministic, unlike wall-clock)."""
        return self._first_ts

    @property
    def age_seconds(self) -> float:
        return 0.0 if self._started is None else time.monotonic() - self._started

    def should_flush(self, flush: Flush) -> bool:
        if self.events == 0:
            return False
        return (self.rows >= flush.max_rows or self.approx_bytes >= flush.max_bytes
                or self.age_seconds >= flush.max_seconds)

    def _touch(self, position: Any, ts_us: int | None) -> None:
        if self._first is None:
            self._started = time.monotonic()
            self._first = position
            self._first_ts = ts_us

    def _note_other(self, position: Any) -> None:
        self._other_events += 1
        if self._last_other is None or position > self._last_other:
            self._last_other = position

    def _switch(self, mode: str) -> None:
        if self._mode != mode:
            if self._mode is not None and self.ops:
                self._flush_pending()
            self._mode = mode

    # ---- Debezium events

    def append_debezium(self, event: dict[str, Any], position: Any) -> bool:
        """Append one Debezium change event; False if it went to the dead-letter list instead."""
        self._switch("json")
        source = event.get("source") or {}
        ts_us = source.get("ts_us")
        ts_ms = source.get("ts_ms")
        ts_label = "ts_us"
        if ts_us is None and ts_ms is not None:
            ts_label = "ts_ms"
            ts_us = ts_ms * 1000 if type(ts_ms) is int else ts_ms
        self._touch(position, ts_us if type(ts_us) is int else None)
        dead = self._dead_on_arrival
        op = event.get("op")
        if op not in ("c", "u", "d", "r"):
            dead(position, f"unknown op {op!r} (expected c, u, d or r)", event)
            return False
        row = event.get("before") if op == "d" else event.get("after")
        if not isinstance(row, dict):
            image = "before" if op == "d" else "after"
            dead(position, f"op {op!r} event without a '{image}' row image", event)
            return False
        index = self._index
        unknown = [k for k in row if k not in index]
        if unknown:
            dead(position, f"unknown column(s) {unknown} for table {self.table.name!r}", event)
            return False
        lsn = source.get("lsn")
        if lsn is None:
            dead(position, "event has no source.lsn", event)
            return False
        tx_id = source.get("txId")
        for name, number in (("lsn", lsn), ("txId", tx_id), (ts_label, ts_us)):
            if number is not None and type(number) is not int:
                dead(position, f"source.{name} must be an integer, got {number!r}", event)
                return False
            if number is not None and not _INT64_MIN <= number <= _INT64_MAX:
                shown = source.get(name)
                dead(position, f"source.{name} is out of the 64-bit range: {shown!r}", event)
                return False
        get = row.get
        for name, col in zip(self.names, self.cols, strict=True):
            col.append(get(name))
        self.ops.append(op)
        self.lsns.append(lsn)
        self.tx_ids.append(tx_id)
        self.ts_us.append(ts_us)
        self.positions.append(position)
        self.raw_events.append(event)
        self.approx_bytes += 16 * len(row) + sum(len(v) for v in row.values() if isinstance(v, str))
        return True

    def append_debezium_value(self, value: bytes | str, position: Any) -> bool:
        """One raw message value (Debezium JSON); malformed or unconvertible events become dead letters."""
        return self._append_parsed(_parse(value), position)

    def _append_parsed(self, event: Any, position: Any) -> bool:
        if isinstance(event, _Malformed):
            self.dead_letter(position, event.reason, event.text)
            return False
        event = _unwrap(event)
        if type(event) is not dict:
            self.dead_letter(position, f"not a JSON object: {type(event).__name__}", event)
            return False
        try:
            return self.append_debezium(event, position)
        except Exception as exc:
            self.dead_letter(position, f"cannot convert: {exc!r}", event)
            return False

    def append_debezium_values(self, values: Sequence[bytes | str], positions: Sequence[Any]) -> int:
        """The bulk path: raw message values of one stream in order (no tombstones), with their positions.

        Returns how many became rows. Output, dead letters and positions are those of calling
        `append_debezium_value` for each value in turn.
        """
        if len(values) != len(positions):
            raise ValueError(f"{len(values)} values but {len(positions)} positions")
        if not values:
            return 0
        before = self.rows
        if self._native is None:
            self._native = _NativeDecoder(self.table)
        native = self._native if self._native.available else None
        for start in range(0, len(values), _BULK_PIECE):
            piece = list(values[start:start + _BULK_PIECE])
            piece_positions = positions[start:start + _BULK_PIECE]
            if native is None:
                self._append_decoded(piece, piece_positions)
                continue
            i, n = 0, len(piece)
            while i < n:
                i += self._append_native(native, piece[i:] if i else piece, piece_positions[i:])
                if i < n:  # the C decoder refused piece[i]: msgspec takes it and a few more
                    j = min(n, i + _NATIVE_REFUSED_RUN)
                    self._append_decoded(piece[i:j], piece_positions[i:j])
                    i = j
        return self.rows - before

    def _append_native(self, native: _NativeDecoder, values: list[bytes | str], positions: Sequence[Any]) -> int:
        """The leading values the C decoder accepts, in bulk; returns how many it took."""
        count, arrays, first_ts = native.decode(values)
        if not count:
            return 0
        try:
            ncols = len(self.names)
            finished = [finish(arr) for finish, arr in zip(self._json_finish, arrays[:ncols], strict=True)]
            for arr, nullable in zip(finished, self._nullable, strict=True):
                if not nullable and arr.null_count:
                    raise _Conversion("NOT NULL column without a value")
            finished += [*arrays[ncols:ncols + 3], arrays[ncols + 3].cast(_TS_UTC)]
        except _BULK_ERRORS:  # a value that does not cast: the msgspec path splits the chunk and says which
            self._append_decoded(values[:count], positions[:count])
            return count
        self._add_chunk(finished, first_ts, count, positions[0], positions[count - 1])
        return count

    def _append_decoded(self, values: Sequence[bytes | str], positions: Sequence[Any]) -> None:
        """msgspec's way: runs of decoded events in bulk, the values it rejects one by one, in order."""
        if self._envelopes is None:
            self._envelopes = _EnvelopeDecoder(self.table)
        events, all_decoded = self._envelopes.decode_all(values)
        if all_decoded:
            self._append_events(events, values, positions)
            return
        i, n = 0, len(events)
        while i < n:
            if events[i] is None:
                self.append_debezium_value(values[i], positions[i])
                i += 1
                continue
            j = i + 1
            while j < n and events[j] is not None:
                j += 1
            self._append_events(events[i:j], values[i:j], positions[i:j])
            i = j

    def _add_chunk(self, arrays: list[pa.Array], first_ts: int | None, count: int, first: Any, last: Any) -> None:
        """Rows converted in bulk join the batch as one chunk, after any pending per-event rows."""
        self._switch("json")
        self._flush_pending()  # keep row order: rows from the per-event path come first
        self._touch(first, first_ts)
        self._chunks.append(_Chunk(arrays))
        self._chunk_rows += count
        self._other_events += count
        if self._last_other is None or last > self._last_other:
            self._last_other = last
        self.approx_bytes += sum(a.nbytes for a in arrays)

    def _append_events(self, events: list[Any], values: Sequence[bytes | str], positions: Sequence[Any]) -> None:
        """Decoded events in bulk; a chunk that does not convert is halved until the culprits go event by event."""
        try:
            chunk = self._bulk_convert(events)
        except _BULK_ERRORS:
            chunk = None
        if chunk is not None:
            arrays, first_ts = chunk
            self._add_chunk(arrays, first_ts, len(events), positions[0], positions[-1])
            return
        n = len(events)
        if n <= _BULK_LEAF:
            for value, position in zip(values, positions, strict=True):
                self.append_debezium_value(value, position)
            return
        half = n // 2
        self._append_events(events[:half], values[:half], positions[:half])
        self._append_events(events[half:], values[half:], positions[half:])

    def _bulk_convert(self, events: list[Any]) -> tuple[list[pa.Array], int | None]:
        """Column arrays for decoded events that all convert; raises (one of `_BULK_ERRORS`) otherwise."""
        assert self._envelopes is not None
        ops_list = [e.op for e in events]
        op_set = set(ops_list)
        if not op_set <= _OPS:
            raise _Conversion("unknown op")
        if "d" in op_set:
            decode_row = self._envelopes.decode_row
            rows = [decode_row(e.before) if op == "d" else e.after for e, op in zip(events, ops_list, strict=True)]
        else:
            rows = [e.after for e in events]
        # Struct → tuple → one Arrow struct array is faster than a column at a time. A missing row image or
        # source is None here: astuple raises TypeError and the chunk splits.
        images = pa.array(list(map(astuple, rows)), self._row_struct)
        arrays = []
        for i, (finish, nullable) in enumerate(zip(self._json_finish, self._nullable, strict=True)):
            arr = finish(images.field(i))
            if not nullable and arr.null_count:
                raise _Conversion("NOT NULL column without a value")
            arrays.append(arr)
        source = pa.array(list(map(astuple, [e.source for e in events])), _SOURCE_STRUCT)
        lsn = source.field(0)
        if lsn.null_count:
            raise _Conversion("no source.lsn")
        ts_us = source.field(2)
        if ts_us.null_count:
            ts_us = pc.coalesce(ts_us, pc.multiply_checked(source.field(3), 1000))
        arrays += [pa.array(ops_list, pa.string()), lsn, source.field(1), ts_us.cast(_TS_UTC)]
        return arrays, ts_us[0].as_py()

    # ---- pgoutput text fast path

    def text_sink(self) -> tuple[list[list[Any]], list[str], list[int]]:
        """The column lists, op list and LSN list the built-in reader appends to directly.

        Contract per row: one value (bytes text or None) appended to every column list, the op to `ops`, the
        change LSN to `lsns`, `approx_bytes` increased; `begin_text_tx` before the first row of each
        transaction in this batch. Positions, event counts and CDC columns all derive from these lists.
        """
        self._switch("text")
        return self.cols, self.ops, self.lsns

    def begin_text_tx(self, commit_lsn: int, xid: int | None, commit_ts_us: int | None, first_lsn: int,
                      lsn_override: int | None = None) -> None:
        """Start a run of rows from one transaction (xid and commit time are per transaction in pgoutput).

        Snapshot rows pass their row number as the "LSN" (it orders them in the file key) and the slot's
        consistent point as `lsn_override`, the `_lsn` every snapshot row carries.
        """
        self._switch("text")
        start = len(self.ops)
        if self.tx_runs and self.tx_runs[-1][0] == start:
            self.tx_runs.pop()
            self._run_starts.pop()
        self.tx_runs.append((start, xid, commit_ts_us, commit_lsn, lsn_override))
        self._run_starts.append(start)
        self._touch(LsnPosition(commit_lsn, first_lsn), commit_ts_us)

    def append_text_row(self, op: str, values: list[Any], position: LsnPosition, xid: int | None,
                        commit_ts_us: int | None) -> None:
        """The fast path for one row (values in spec column order, bytes text or None)."""
        cols, ops, lsns = self.text_sink()
        if not self.tx_runs or self.tx_runs[-1][3] != position.commit or self.tx_runs[-1][1] != xid:
            self.begin_text_tx(position.commit, xid, commit_ts_us, position.lsn)
        for col, value in zip(cols, values, strict=True):
            col.append(value)
        ops.append(op)
        lsns.append(position.lsn)
        self.approx_bytes += sum(len(v) for v in values if v is not None) + 8 * len(values)

    def dead_letter(self, position: Any, reason: str, event: Any, ts_us: int | None = None) -> None:
        """Record an event that cannot become a row (it still counts for the batch's position range)."""
        self._touch(position, ts_us)
        self._note_other(position)
        self._dead(position, reason, event)

    def _dead_on_arrival(self, position: Any, reason: str, event: Any) -> None:
        self._note_other(position)
        self._dead(position, reason, event)

    def _dead(self, position: Any, reason: str, event: Any) -> None:
        self.dead_letters.append(DeadLetter(self.table.name, position, reason, event))

    # ---- conversion

    def _text_row_event(self, i: int) -> dict[str, Any]:
        run = self.tx_runs[bisect_right(self._run_starts, i) - 1]
        op = self.ops[i]
        lsn = self.lsns[i] if run[4] is None else run[4]
        values = {n: (c[i].decode(errors="replace") if isinstance(c[i], bytes) else c[i])
                  for n, c in zip(self.names, self.cols, strict=True)}
        return {"op": op, "before" if op == "d" else "after": values,
                "source": {"table": self.table.name, "lsn": lsn, "txId": run[1], "ts_us": run[2],
                           "commit_lsn": run[3]}}

    def _row_position(self, i: int) -> Any:
        if self._mode == "json":
            return self.positions[i]
        run = self.tx_runs[bisect_right(self._run_starts, i) - 1]
        return LsnPosition(run[3], self.lsns[i])

    def _convert_pending(self) -> _Chunk:
        n = len(self.ops)
        convs = self._text_conv if self._mode == "text" else self._json_conv
        bad: dict[int, str] = {}
        arrays = [_convert_column(conv, col, name, nullable, bad)
                  for conv, col, name, nullable in zip(convs, self.cols, self.names, self._nullable, strict=True)]
        lsns: list[int] = self.lsns
        if self._mode == "text":
            xids: list[Any] = []
            tss: list[Any] = []
            bounds = [*self._run_starts[1:], n]
            overridden = False
            for (start, xid, ts, _commit, override), end in zip(self.tx_runs, bounds, strict=True):
                xids.extend([xid] * (end - start))
                tss.extend([ts] * (end - start))
                overridden = overridden or override is not None
            if overridden:
                lsns = []
                for (start, _x, _t, _c, override), end in zip(self.tx_runs, bounds, strict=True):
                    lsns.extend([override] * (end - start) if override is not None else self.lsns[start:end])
        else:
            xids, tss = self.tx_ids, self.ts_us
        arrays += [
            pa.array(self.ops, pa.string()),
            pa.array(lsns, pa.int64()),
            pa.array(xids, pa.int64()),
            pa.array(tss, pa.int64()).cast(_TS_UTC),
        ]
        if bad:
            for i in sorted(bad):
                event = self.raw_events[i] if self._mode == "json" else self._text_row_event(i)
                self._dead(self._row_position(i), bad[i], event)
            keep = pa.array([i not in bad for i in range(n)])
            arrays = [pc.filter(a, keep) for a in arrays]
        return _Chunk(arrays)

    def _flush_pending(self) -> None:
        """Convert the pending rows into an Arrow chunk (keeping their position range and event count)."""
        if not self.ops:
            return
        last = self.last_position
        n = len(self.ops)
        self._chunks.append(self._convert_pending())
        self._chunk_rows = sum(len(c) for c in self._chunks)
        self._other_events += n
        self._last_other = last
        self._clear_pending()

    def to_arrow(self, file_key: str) -> pa.Table:
        """Every row as an Arrow table in `table_arrow_schema` order; `_file` = the key the rows go to.

        Conversion failures found here move their events to `dead_letters` (check it after calling).
        """
        self._flush_pending()
        chunks = self._chunks
        schema = self.arrow_schema
        if not chunks:
            return schema.empty_table()
        columns = [pa.chunked_array([c.arrays[i] for c in chunks], type=schema.field(i).type)
                   for i in range(len(chunks[0].arrays))]
        rows = sum(len(c) for c in chunks)
        columns.append(pa.chunked_array([pa.repeat(pa.scalar(file_key, pa.string()), rows)]))
        return pa.Table.from_arrays(columns, schema=schema)

    def clear(self) -> None:
        """Forget everything (after the file and its dead letters are durable)."""
        self._reset()
