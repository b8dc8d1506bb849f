"""Debezium JSON message values → what a batch keeps: rows converted in bulk, one event's fields, or dead letters.

The per-event path is the reference: `parse_value` reads one value with orjson, `judge_event` says whether the
event can become a row (and why not: the dead-letter reason). Every bulk path must end where it does.

`DebeziumDecoder.decode` is the bulk path for the raw values of one stream, in order. The C decoder
(`bankflow.lake.native`) reads them straight into Arrow buffers and stops at the first value it does not accept;
that value and a few after it go the msgspec way: msgspec decodes them strictly into typed structs
(`_EnvelopeDecoder`), which become Arrow arrays in one go. Both end in the same vectorised casts
(`bankflow.lake.convert.json_finish`). A value msgspec rejects (malformed JSON, a wrong JSON type, an unknown
column) and a chunk with anything else unusual in it (an unknown op, a value that does not cast, a missing NOT
NULL value) is split until the culprits are isolated, and those are handed back one by one (`OneEvent`) for the
per-event path, so dead letters and output stay what it gives.

No value stops a consumer: whatever a path cannot take goes to the per-event path, which makes it a row or a
dead letter with the reason. What it refuses beyond malformed JSON: nesting deeper than `MAX_NESTING` (orjson
reads 1024 levels, msgspec fails at Python's recursion limit, and neither the dead-letter store nor a reason
could render it), a negative or non-64-bit position (`source.lsn`, `source.txId`), a commit time outside the
years 1 to 9999 (it names the file's `{date}`), and column values outside their declared type
(`bankflow.lake.convert`).
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Sequence
from typing import Any, NamedTuple, Optional

import msgspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from msgspec.structs import astuple

from bankflow.lake import native
from bankflow.lake.arrow_schema import source_fields
from bankflow.lake.convert import CONVERSION_ERRORS, TS_UTC, json_finish, json_input_type, json_python_type
from bankflow.spec.models import Table

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Commit times a file key can name a date for (`datetime`'s years 1 to 9999), µs since 1970; `_envelope.c` too.
SOURCE_TS_MIN, SOURCE_TS_MAX = -62_135_596_800_000_000, 253_402_300_799_999_999
MAX_NESTING = 64  # JSON containers nested deeper than this (the envelope object is level 1): a dead letter
_OPS = ("c", "u", "d", "r")  # a tuple: an op read from JSON may be unhashable (a list)
_OP_SET = frozenset(_OPS)
# Debezium's `unavailable.value.placeholder` (its default): the C decoder refuses it too (`_envelope.c`)
UNAVAILABLE_VALUE = "__debezium_unavailable_value"


# ---------------------------------------------------------------- one event at a time (the reference)

class Malformed:
    """A message value that is not JSON: its dead-letter reason and text."""

    __slots__ = ("reason", "text")

    def __init__(self, reason: str, text: str) -> None:
        self.reason = reason
        self.text = text


def _text(value: bytes | str) -> str:
    """A value as the text its dead letter keeps: valid UTF-8 (the store writes JSON), a lone surrogate of a str
    value escaped as ``\\udXXX``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def nesting(value: Any) -> int:
    """How deeply JSON containers nest in a decoded value (a scalar 0, ``{}`` 1, ``{"a": []}`` 2)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if type(item) is dict:
            children: Any = item.values()
        elif type(item) is list:
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if type(child) is dict or type(child) is list)
    return deepest


def _brackets(value: bytes | str) -> int:
    """An upper bound of the nesting of a JSON text: it cannot nest deeper than it has opening brackets."""
    if isinstance(value, str):
        return value.count("{") + value.count("[")
    data = bytes(value)
    return data.count(b"{") + data.count(b"[")


def parse_value(value: bytes | str) -> Any:
    """One message value as orjson reads it (schemas-enabled wrapper removed), or `Malformed`."""
    try:
        event = orjson.loads(value)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        return Malformed(f"malformed JSON: {exc}", _text(value))
    if _brackets(value) > MAX_NESTING and nesting(event) > MAX_NESTING:
        return Malformed(f"JSON nested deeper than {MAX_NESTING} levels", _text(value))
    # JsonConverter with schemas.enable=true wraps the event in {"schema": …, "payload": …}
    if type(event) is dict and "op" not in event and type(event.get("payload")) is dict:
        return event["payload"]
    return event


class EventRow(NamedTuple):
    """What a batch keeps of an event that can become a row."""

    op: str
    row: dict[str, Any]
    lsn: int
    tx_id: int | None
    ts_us: int | None


class ShapeMismatch(NamedTuple):
    """An event whose row image has other columns than the table's shape: a schema change in the source, or an
    event from before a column was added. `row` is what the event would be as a row of the shape."""

    unknown: tuple[str, ...]  # columns the image has and the shape does not
    missing: tuple[str, ...]  # columns of the shape the image lacks
    keys: tuple[str, ...]  # the image's columns, in the event's order
    row: EventRow


def judge_event(event: dict[str, Any], columns: Container[str], table: str,
                expected: Sequence[str] | None = None) -> tuple[int | None, EventRow | ShapeMismatch | str]:
    """(the event's commit time in µs when it is an integer, its row or the reason it is a dead letter).

    With `expected` (the shape's columns in order) a row image with other columns is a `ShapeMismatch` for the
    caller's schema-change policy; without it an unknown column is a dead letter and a missing one NULL.
    Raises on a shape nothing here expects (a `source` that is not an object): the caller makes that a dead
    letter with the exception as the reason.
    """
    source = event.get("source") or {}
    ts_us = source.get("ts_us")
    ts_ms = source.get("ts_ms")
    ts_label = "ts_us"
    if ts_us is None and ts_ms is not None:
        ts_label = "ts_ms"
        ts_us = ts_ms * 1000 if type(ts_ms) is int else ts_ms
    # only a commit time a file key can name a date for reaches the batch
    touched = ts_us if type(ts_us) is int and SOURCE_TS_MIN <= ts_us <= SOURCE_TS_MAX else None
    op = event.get("op")
    if op not in _OPS:
        return touched, f"unknown op {op!r} (expected c, u, d or r)"
    row = event.get("before") if op == "d" else event.get("after")
    if not isinstance(row, dict):
        image = "before" if op == "d" else "after"
        return touched, f"op {op!r} event without a '{image}' row image"
    unknown = [k for k in row if k not in columns]
    if unknown and expected is None:
        return touched, f"unknown column(s) {unknown} for table {table!r}"
    unavailable = [k for k, v in row.items() if v == UNAVAILABLE_VALUE]
    if unavailable:
        return touched, (f"column(s) {unavailable} hold Debezium's {UNAVAILABLE_VALUE!r}: an unchanged TOAST value "
                         "it could not read (REPLICA IDENTITY DEFAULT); never written as a value (set REPLICA "
                         "IDENTITY FULL on the table)")
    lsn = source.get("lsn")
    if lsn is None:
        lsn = incremental_snapshot_lsn(source)
    if lsn is None:
        return touched, "event has no source.lsn"
    tx_id = source.get("txId")
    wrong = _source_problem(source, lsn, tx_id, ts_label, ts_us, touched)
    if wrong:
        return touched, wrong
    judged = EventRow(op, row, lsn, tx_id, ts_us)
    if expected is not None:
        missing = [c for c in expected if c not in row]
        if unknown or missing:
            return touched, ShapeMismatch(tuple(unknown), tuple(missing), tuple(row), judged)
    return touched, judged


def incremental_snapshot_lsn(source: dict[str, Any]) -> int | None:
    """A row of Debezium's incremental snapshot (a backfill) has no `source.lsn`; its `sequence` holds the LSN of
    the snapshot window's close marker twice (``["28411640","28411640"]``). Debezium emits the chunk there, after
    dropping the rows whose key changed inside the window, so that LSN orders the row after every change of its
    key it saw and before every later one. None for any other event."""
    if source.get("snapshot") != "incremental":
        return None
    sequence = source.get("sequence")
    if not isinstance(sequence, str) or len(sequence) > 64:
        return None
    try:
        last = orjson.loads(sequence)[-1]
        return int(last) if isinstance(last, str) and last.isdigit() and len(last) < 20 else None
    except (orjson.JSONDecodeError, IndexError, TypeError, KeyError):
        return None


def _source_problem(source: dict[str, Any], lsn: Any, tx_id: Any, ts_label: str, ts_us: Any,
                    touched: int | None) -> str | None:
    """Why the event's position or commit time cannot be kept, or None."""
    for name, number in (("lsn", lsn), ("txId", tx_id), (ts_label, ts_us)):
        if number is not None and type(number) is not int:
            return f"source.{name} must be an integer, got {number!r}"
        if number is not None and not _INT64_MIN <= number <= _INT64_MAX:
            return f"source.{name} is out of the 64-bit range: {source.get(name)!r}"
    for name, number in (("lsn", lsn), ("txId", tx_id)):
        if number is not None and number < 0:
            return f"source.{name} must not be negative, got {number!r}"
    if ts_us is not None and touched is None:
        return (f"source.{ts_label} is out of range: {source.get(ts_label)!r} "
                "(a commit time must lie in the years 1 to 9999)")
    return None


# ---------------------------------------------------------------- msgspec: typed, strict, in bulk

# A number that may not fit a double (an exponent of 3 digits, 100 digits in a row) is refused by orjson, not by
# msgspec when it skips the field. Without the C scan: digits → "0", "E" → "e", "-" → "+", then substring tests;
# and "[" → "{" to count opening brackets in the same pass.
_NUMBER_SHAPES = bytes.maketrans(b"0123456789E-[", b"0000000000e+{")
_HUGE_SHAPES = (b"0e000", b"0e+000", b"0" * 100)


class _PerEventOnly(Exception):
    """A value msgspec's typed decoding might judge otherwise than the per-event path (orjson) does."""


def _checked(value: bytes | str) -> bytes | str:
    """The value, unless msgspec might judge it otherwise than orjson: msgspec checks neither the UTF-8 text nor
    the numbers of the fields it skips. The C scan takes about 1.4 µs for a 550-byte value, the Python one 4."""
    # a lone surrogate in a str value becomes invalid UTF-8 here, and so goes to the per-event path
    data = value if type(value) is bytes else value.encode("utf-8", "surrogatepass")  # type: ignore[union-attr]
    extension = native.extension
    if extension is not None:
        if not extension.msgspec_safe(data, MAX_NESTING):
            raise _PerEventOnly
        return value
    if not data.isascii():
        data.decode()  # UnicodeDecodeError
    shapes = data.translate(_NUMBER_SHAPES)
    huge, huge_signed, digits = _HUGE_SHAPES
    # more opening brackets than the bound: it might nest too deeply (msgspec's recursion, MAX_NESTING)
    if huge in shapes or huge_signed in shapes or digits in shapes or shapes.count(b"{") > MAX_NESTING:
        raise _PerEventOnly
    return value


# msgspec raises UnicodeDecodeError too, and RecursionError on deep nesting (which `_checked` leaves out first)
_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError, _PerEventOnly)
_SOURCE_FIELDS = ("lsn", "txId", "ts_us", "ts_ms")  # the order of `_EnvelopeDecoder`'s source struct
_SOURCE_STRUCT = pa.struct([(name, pa.int64()) for name in _SOURCE_FIELDS])


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
            # required (no default): an image without a column of the shape is not read as NULL, it goes to
            # the per-event path, which reports the schema change
            "RowImage", [(slot, Optional[json_python_type(c.pg_type)])  # noqa: UP045 (runtime type)
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


# ---------------------------------------------------------------- the bulk path

class _Unconvertible(Exception):
    """Something in a chunk the bulk conversion does not take; the chunk splits and the per-event path judges."""


_BULK_ERRORS = (*CONVERSION_ERRORS, KeyError, AttributeError, msgspec.DecodeError, _Unconvertible)
_BULK_LEAF = 32  # a failing chunk is split in halves down to this size, then goes event by event
_BULK_PIECE = 2048  # values decoded at a time: bounds the decoded events alive at once (memory, cache)
_NATIVE_REFUSED_RUN = 256  # values the msgspec path takes after one the C decoder refused, before it resumes


class BulkRows(NamedTuple):
    """Rows converted in bulk: the source-column arrays in the lake types, then _op, _lsn, _tx_id, _source_ts."""

    arrays: list[pa.Array]
    rows: int
    first_ts: int | None  # the first event's commit time, µs
    first: Any  # positions of the first and last event
    last: Any


class OneEvent(NamedTuple):
    """A value for the per-event path (it makes it a row or a dead letter, with the reason)."""

    value: bytes | str
    position: Any


class DebeziumDecoder:
    """The bulk path for one table: raw values in, `BulkRows` and `OneEvent`s out, in the values' order."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._finish = [json_finish(c.pg_type) for c in table.columns]
        self._nullable = [f.nullable for f in source_fields(table)]
        self._row_struct = pa.struct([pa.field(f"c{i}", json_input_type(c.pg_type))
                                      for i, c in enumerate(table.columns)])
        self._envelopes: _EnvelopeDecoder | None = None  # built on first use
        self._native: native.NativeDecoder | None = None  # likewise

    def decode(self, values: Sequence[bytes | str], positions: Sequence[Any]) -> Iterator[BulkRows | OneEvent]:
        """Values of one stream in order (no tombstones) with their positions, a piece at a time."""
        if self._native is None:
            self._native = native.NativeDecoder(self.table)
        decoder = self._native if self._native.available else None
        for start in range(0, len(values), _BULK_PIECE):
            piece = list(values[start:start + _BULK_PIECE])
            piece_positions = positions[start:start + _BULK_PIECE]
            if decoder is None:
                yield from self._decoded(piece, piece_positions)
            else:
                yield from self._native_piece(decoder, piece, piece_positions)

    def _native_piece(self, decoder: native.NativeDecoder, piece: list[bytes | str],
                      positions: Sequence[Any]) -> Iterator[BulkRows | OneEvent]:
        """The C decoder takes what it accepts; after a value it refuses, msgspec takes that one and a few more."""
        i, n = 0, len(piece)
        while i < n:
            values = piece[i:] if i else piece
            try:
                count, arrays, first_ts = decoder.decode(values)
            except _BULK_ERRORS:  # never expected (it refuses what does not fit); msgspec takes the run then
                count, arrays, first_ts = 0, [], None
            if count:
                yield from self._native_rows(arrays, first_ts, count, values, positions[i:])
                i += count
            if i < n:  # the C decoder refused piece[i]
                j = min(n, i + _NATIVE_REFUSED_RUN)
                yield from self._decoded(piece[i:j], positions[i:j])
                i = j

    def _native_rows(self, arrays: list[pa.Array], first_ts: int | None, count: int, values: list[bytes | str],
                     positions: Sequence[Any]) -> Iterator[BulkRows | OneEvent]:
        """The C decoder's arrays in the lake types; a value that does not cast sends them the msgspec way,
        which splits the chunk and says which."""
        ncols = len(self._finish)
        try:
            finished = [finish(arr) for finish, arr in zip(self._finish, arrays[:ncols], strict=True)]
            self._check_not_null(finished)
            finished += [*arrays[ncols:ncols + 3], arrays[ncols + 3].cast(TS_UTC)]
        except _BULK_ERRORS:
            yield from self._decoded(values[:count], positions[:count])
            return
        yield BulkRows(finished, count, first_ts, positions[0], positions[count - 1])

    def _check_not_null(self, arrays: list[pa.Array]) -> None:
        for arr, nullable in zip(arrays, self._nullable, strict=True):
            if not nullable and arr.null_count:
                raise _Unconvertible("NOT NULL column without a value")

    def _decoded(self, values: Sequence[bytes | str], positions: Sequence[Any]) -> Iterator[BulkRows | OneEvent]:
        """msgspec's way: runs of decoded events in bulk, the values it rejects one by one, in order."""
        if self._envelopes is None:
            self._envelopes = _EnvelopeDecoder(self.table)
        events, all_decoded = self._envelopes.decode_all(values)
        if all_decoded:
            yield from self._events(events, values, positions)
            return
        i, n = 0, len(events)
        while i < n:
            if events[i] is None:
                yield OneEvent(values[i], positions[i])
                i += 1
                continue
            j = i + 1
            while j < n and events[j] is not None:
                j += 1
            yield from self._events(events[i:j], values[i:j], positions[i:j])
            i = j

    def _events(self, events: list[Any], values: Sequence[bytes | str],
                positions: Sequence[Any]) -> Iterator[BulkRows | OneEvent]:
        """Decoded events in bulk; a chunk that does not convert is halved until the culprits go event by event."""
        try:
            arrays, first_ts = self._convert(events)
        except _BULK_ERRORS:
            pass
        else:
            yield BulkRows(arrays, len(events), first_ts, positions[0], positions[-1])
            return
        n = len(events)
        if n <= _BULK_LEAF:
            for value, position in zip(values, positions, strict=True):
                yield OneEvent(value, position)
            return
        half = n // 2
        yield from self._events(events[:half], values[:half], positions[:half])
        yield from self._events(events[half:], values[half:], positions[half:])

    def _convert(self, events: list[Any]) -> tuple[list[pa.Array], int | None]:
        """Column arrays for decoded events that all convert; raises (one of `_BULK_ERRORS`) otherwise."""
        assert self._envelopes is not None
        ops_list = [e.op for e in events]
        op_set = set(ops_list)
        if not op_set <= _OP_SET:
            raise _Unconvertible("unknown op")
        if "d" in op_set:
            decode_row = self._envelopes.decode_row
            rows = [decode_row(e.before) if op == "d" else e.after for e, op in zip(events, ops_list, strict=True)]
        else:
            rows = [e.after for e in events]
        # Struct → tuple → one Arrow struct array is faster than a column at a time. A missing row image or
        # source is None here: astuple raises TypeError and the chunk splits.
        images = pa.array(list(map(astuple, rows)), self._row_struct)
        _check_available(images)
        arrays = [finish(images.field(i)) for i, finish in enumerate(self._finish)]
        self._check_not_null(arrays)
        source = pa.array(list(map(astuple, [e.source for e in events])), _SOURCE_STRUCT)
        lsn = source.field(0)
        if lsn.null_count:
            raise _Unconvertible("no source.lsn")
        ts_us = source.field(2)
        if ts_us.null_count:
            ts_us = pc.coalesce(ts_us, pc.multiply_checked(source.field(3), 1000))
        _check_range(lsn, 0, _INT64_MAX)
        _check_range(source.field(1), 0, _INT64_MAX)
        _check_range(ts_us, SOURCE_TS_MIN, SOURCE_TS_MAX)
        arrays += [pa.array(ops_list, pa.string()), lsn, source.field(1), ts_us.cast(TS_UTC)]
        return arrays, ts_us[0].as_py()


def _check_available(images: pa.StructArray) -> None:
    """Raise when a string field holds Debezium's unavailable-value placeholder (the per-event path says which)."""
    for field, column in zip(images.type, images.flatten(), strict=True):
        if pa.types.is_string(field.type) and pc.any(pc.equal(column, UNAVAILABLE_VALUE)).as_py():
            raise _Unconvertible("Debezium's unavailable-value placeholder")


def _check_range(arr: pa.Array, low: int, high: int) -> None:
    """Raise when a value of the int64 array lies outside [low, high] (the per-event path says which and why)."""
    if arr.null_count == len(arr):
        return
    least, most = pc.min_max(arr).values()
    if least.as_py() < low or most.as_py() > high:
        raise _Unconvertible("a source field out of range")
