"""Column values → Arrow arrays of the lake type, per Postgres type: one job, two inputs.

- `text_converter`: Postgres text output (pgoutput, COPY; session TimeZone=UTC, DateStyle=ISO) → Arrow.
- `json_converter`: Debezium JSON values (``decimal.handling.mode=string``,
  ``time.precision.mode=adaptive_time_microseconds``) as Python objects → Arrow.
- `json_input_type` / `json_finish`: the bulk decoders read a Debezium column straight into an Arrow array of
  `json_input_type`; `json_finish` turns it into the lake type with the same conversions, vectorised.

Numeric text becomes decimal128 exactly, never through float. `convert_column` converts a whole column in one
Arrow cast and, when that fails, finds the culprit values one by one so only their rows become dead letters.

Every value is checked against its declared type, on every input, so nothing downstream (a Parquet reader, a
warehouse COPY that aborts the whole file) meets a value the column cannot hold: integer widths, dates and
timestamps of the years 1 to 9999 only (BC, beyond 9999 and ±infinity are dead letters, alike on every path: see
`DATE_DAYS`), time within a day, decimal precision and scale, the declared length of varchar(n)
and char(n) (in characters; for char(n) without trailing blanks, as Postgres compares, and trimmed to n as
Postgres stores it), the form of a uuid, json text that parses, and real's range.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from bankflow.lake.arrow_schema import arrow_type
from bankflow.spec.types import PgType

try:  # the C decoder's strict JSON scan narrows the json check to the few values it does not accept
    from bankflow.lake import _envelope
except ImportError:  # pragma: no cover - a source tree that was never built
    _envelope = None  # type: ignore[assignment]

Converter = Callable[[list[Any]], pa.Array]

INT_KINDS = ("smallint", "integer", "bigint")
_STRING_KINDS = ("text", "varchar", "char", "uuid", "json", "jsonb")
TS_UTC = pa.timestamp("us", tz="UTC")
INT64_BOUNDS = (-(2**63), 2**63 - 1)
# Dates and timestamps (with and without zone): the years 1 to 9999, one rule on every path (pgoutput and COPY
# text, Debezium JSON per event, msgspec bulk, C bulk). Postgres holds 4713 BC to 5874897 and ±infinity, Arrow's
# date32 and timestamp[us] hold BC years and years beyond 9999 (not infinity), DuckDB too; but Snowflake's DATE and
# TIMESTAMP are documented for the years up to 9999 only (1582 to 9999 recommended; earlier years are proleptic
# Gregorian, as in Postgres, so they stay exact), ANSI SQL's DATE is 0001-01-01 to 9999-12-31 and Python's datetime
# (pyarrow's to_pylist, the dead-letter replay, dbt's Python) holds years 1 to 9999. A lake must load into every
# warehouse alike, so a value of those years is carried exactly, and a value BC, after 9999 or ±infinity (no image in
# date32 or timestamp[us] at all) is a dead letter whose reason names the value, the column and why: never a row
# that one warehouse loads and another refuses (a COPY that aborts a whole file), never a clamped or wrapped value.
# Debezium (adaptive_time_microseconds) sends dates as days and timestamps as µs since 1970-01-01, so these are
# also the bounds the bulk decoders check (`json_int_bounds`; the C decoder refuses an integer beyond them).
DATE_DAYS = (-719_162, 2_932_896)  # 0001-01-01 .. 9999-12-31
TIMESTAMP_US = (-62_135_596_800_000_000, 253_402_300_799_999_999)  # 0001-01-01 00:00 .. 9999-12-31 23:59:59.999999
# How Debezium 3.x writes Postgres' infinity: timestamp as pgjdbc's PGStatement.DATE_POSITIVE/NEGATIVE_INFINITY read
# as µs, date as the epoch day of the LocalDate it stands for (PostgresValueConverter.POSITIVE/NEGATIVE_INFINITY_*),
# timestamptz as the text 'infinity' / '-infinity'. Only named in reasons: any value beyond the years is refused.
DEBEZIUM_INFINITY = {
    "date": {-2_147_472_693: "infinity", -2_147_472_692: "-infinity"},
    "timestamp": {9_223_372_036_825_200_000: "infinity", -9_223_372_036_832_400_000: "-infinity"},
}
_TEMPORAL_KINDS = ("date", "timestamp", "timestamptz")
_CARRIED = "the lake carries the years 1 to 9999 only, as Snowflake, ANSI SQL and Python's datetime hold them"
# 24:00:00, which Postgres allows, has no image in Arrow's time64 or in Snowflake's TIME: a dead letter
TIME_US = (0, 86_399_999_999)
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "smallint": (-(2**15), 2**15 - 1), "integer": (-(2**31), 2**31 - 1), "bigint": INT64_BOUNDS,
    "date": DATE_DAYS, "time": TIME_US, "timestamp": TIMESTAMP_US,
}
_UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_SHOWN = 200  # characters of a bad value a dead-letter reason quotes
# what a converter raises for a value it cannot convert (anything else is a bug, not bad input)
CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError,
                     ValueError)


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
_TOO_MANY_DIGITS = r"^[+-]?[0.]*[1-9]([.]?[0-9]){38}"  # 39 digits or more after the leading zeros


def _decimal_text(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """Numeric text → decimal128 exactly (never through float)."""
    plain = pc.match_substring_regex(arr, _PLAIN_DECIMAL)
    if not pc.all(pc.or_kleene(plain, pc.is_null(arr))).as_py():
        raise pa.ArrowInvalid("numeric text must be a plain decimal number: digits, an optional point and sign")
    # pyarrow's cast wraps around silently on a few hundred digits ('9' * 1000 → -1): it refuses 39 digits and
    # more only up to some length, so more than 38 are refused here, always
    longest = pc.max(pc.binary_length(arr)).as_py()  # 38 digits, a sign and a point fit in 40 bytes
    if longest is not None and longest > 40 and pc.any(pc.match_substring_regex(arr, _TOO_MANY_DIGITS)).as_py():
        raise pa.ArrowInvalid("numeric text with more digits than decimal128's precision of 38")
    return arr.cast(target)


# ---------------------------------------------------------------- dates and timestamps: the years 1 to 9999

_PG_DATE = re.compile(r"(\d{4,})-(\d\d)-(\d\d)( BC)?")
_PG_TIMESTAMP = re.compile(r"(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(\.\d{1,6})?( BC)?")
_PG_TIMESTAMPTZ = re.compile(
    r"(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(\.\d{1,6})?([+-]\d\d(?::?\d\d(?::?\d\d)?)?)( BC)?")
# Debezium's ZonedTimestamp: Java's ISO_OFFSET_DATE_TIME, a signed year beyond 9999 or before 1 ("+10000-…",
# "-0043-…" for 44 BC, "0000-…" for 1 BC)
_ISO_TIMESTAMPTZ = re.compile(
    r"([+-]?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d{1,6})?(Z|[+-]\d\d:\d\d(?::\d\d)?)")
_US_PER_DAY = 86_400_000_000


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (year 0 is 1 BC), for any year."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of days since 1970-01-01, proleptic Gregorian (year 0 is 1 BC)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, doy - (153 * mp + 2) // 5 + 1


def _valid_day(year: int, month: int, day: int) -> bool:
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    return 1 <= month <= 12 and 1 <= day <= days[month - 1]


def _offset_us(text: str) -> int:
    if text == "Z":
        return 0
    digits = text[1:].replace(":", "")
    hours, minutes, seconds = int(digits[:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    if minutes > 59 or seconds > 59:
        raise ValueError(text)
    return (1 if text[0] == "+" else -1) * ((hours * 60 + minutes) * 60 + seconds) * 1_000_000


def _parsed(kind: str, text: str, iso: bool) -> int | None:
    """Days (date) or µs (timestamp, timestamptz in UTC) since 1970-01-01 of a Postgres text value (DateStyle=ISO)
    or of Debezium's ISO timestamptz, in any year; None when it is neither (Arrow's error stands then)."""
    pattern = _ISO_TIMESTAMPTZ if iso else {"date": _PG_DATE, "timestamp": _PG_TIMESTAMP}.get(kind, _PG_TIMESTAMPTZ)
    match = pattern.fullmatch(text)
    if match is None:
        return None
    groups = match.groups()
    year, month, day = int(groups[0]), int(groups[1]), int(groups[2])
    if groups[-1] == " BC":  # Postgres' 1 BC is year 0
        year = 1 - year
    if not _valid_day(year, month, day):
        return None
    days = _days_from_civil(year, month, day)
    if kind == "date":
        return days
    hour, minute, second = int(groups[3]), int(groups[4]), int(groups[5])
    if hour > 23 or minute > 59 or second > 59:
        return None
    fraction = int((groups[6] or ".")[1:].ljust(6, "0"))
    try:
        offset = _offset_us(groups[7]) if kind == "timestamptz" else 0
    except ValueError:
        return None
    return days * _US_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1_000_000 + fraction - offset


def _rendered(kind: str, value: int) -> str:
    """Days or µs since 1970-01-01 as Postgres writes the value (DateStyle=ISO, TimeZone=UTC), in any year."""
    days, rest = (value, 0) if kind == "date" else divmod(value, _US_PER_DAY)
    year, month, day = _civil_from_days(days)
    text = f"{year if year > 0 else 1 - year:04d}-{month:02d}-{day:02d}"
    if kind != "date":
        seconds, fraction = divmod(rest, 1_000_000)
        text += f" {seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        text += f".{fraction:06d}".rstrip("0") if fraction else ""
        text += "+00" if kind == "timestamptz" else ""
    return text if year > 0 else text + " BC"


def _not_carried(pg: PgType, shown: str, detail: str) -> pa.ArrowInvalid:
    """The one reason every path gives for a date or timestamp it cannot carry (the value as Postgres writes it)."""
    return pa.ArrowInvalid(f"{shown} cannot be carried in a {pg.sql} column ({detail}); {_CARRIED}")


def _infinite(pg: PgType, word: str) -> pa.ArrowInvalid:
    return _not_carried(pg, word, f"Arrow's {arrow_type(pg)} has no {word}")


def _beyond_years(pg: PgType, value: int) -> pa.ArrowInvalid:
    """The reason for days or µs outside the years 1 to 9999 (Debezium's image of infinity named as such)."""
    word = DEBEZIUM_INFINITY.get(pg.kind, {}).get(value)
    if word is not None:
        return _infinite(pg, word)
    low = TIMESTAMP_US[0] if pg.kind != "date" else DATE_DAYS[0]
    side = "before the year 1" if value < low else "after the year 9999"
    return _not_carried(pg, _rendered(pg.kind, value), side)


def _in_years(arr: pa.Array, pg: PgType) -> pa.Array:
    """The date32 or timestamp array, unless a value lies outside the years 1 to 9999."""
    if arr.null_count == len(arr):
        return arr
    low, high = _DATE_SCALARS if pg.kind == "date" else _TS_SCALARS[pg.kind == "timestamptz"]
    least, most = pc.min_max(arr).values()
    if pc.less(least, low).as_py():
        raise _beyond_years(pg, least.value)
    if pc.greater(most, high).as_py():
        raise _beyond_years(pg, most.value)
    return arr


_DATE_SCALARS = (pa.scalar(DATE_DAYS[0], pa.date32()), pa.scalar(DATE_DAYS[1], pa.date32()))
_TS_SCALARS = tuple((pa.scalar(TIMESTAMP_US[0], t), pa.scalar(TIMESTAMP_US[1], t))
                    for t in (pa.timestamp("us"), TS_UTC))


def temporal_text(pg: PgType, *, iso: bool = False) -> Callable[[pa.Array], pa.Array]:
    """A string array of dates or timestamps → date32 / timestamp[us] (timestamptz: in UTC), the years 1 to 9999
    only: Postgres text output (DateStyle=ISO; any UTC offset, also with seconds) or, with `iso`, Debezium's
    ZonedTimestamp. Arrow's cast reads the usual values; what it refuses is read here value by value, so that a
    value of those years is carried exactly and any other raises with the reason every path gives."""
    target = arrow_type(pg)
    kind = pg.kind

    def convert(arr: pa.Array) -> pa.Array:
        try:
            out = arr.cast(target)
        except pa.ArrowInvalid:
            values = arr.to_pylist()
            numbers: list[int | None] = []
            for text in values:
                if text is None:
                    numbers.append(None)
                    continue
                if text in ("infinity", "-infinity"):
                    raise _infinite(pg, text) from None
                number = _parsed(kind, text, iso)
                if number is None:
                    raise
                numbers.append(number)
            out = pa.array(numbers, pa.int32() if kind == "date" else pa.int64()).cast(target)
        return _in_years(out, pg)

    return convert


def text_converter(pg: PgType) -> Converter:
    """Postgres text output (as pgoutput and COPY send it, session TimeZone=UTC, DateStyle=ISO) → Arrow."""
    target = arrow_type(pg)
    kind = pg.kind
    if kind in _STRING_KINDS:
        checked = string_check(pg)
        return lambda v: checked(pa.array(v, pa.string()))
    if kind == "boolean":
        return _text_bool
    if kind == "bytea":
        return _text_bytea
    if kind == "time":
        return _text_time
    if kind == "numeric":
        return lambda v: _decimal_text(pa.array(v, pa.string()), target)
    if kind == "real":
        return lambda v: _real(pa.array(v, pa.string()).cast(pa.float64()))
    if kind in _TEMPORAL_KINDS:
        temporal = temporal_text(pg)
        return lambda v: temporal(pa.array(v, pa.string()))
    # ints, double
    return lambda v: pa.array(v, pa.string()).cast(target)


def json_int_bounds(pg: PgType) -> tuple[int, int] | None:
    """The range of the integer a Debezium JSON value of this column is (its width, or the days or µs since
    1970-01-01 of the years 1 to 9999 for a date or timestamp), or None for a column not read as an integer."""
    return _INT_BOUNDS.get(pg.kind)


def _out_of_range(value: int, pg: PgType, bounds: tuple[int, int]) -> pa.ArrowInvalid:
    if pg.kind in _TEMPORAL_KINDS:
        return _beyond_years(pg, value)
    return pa.ArrowInvalid(f"{value} is out of range for {pg.sql} ({bounds[0]} to {bounds[1]})")


def _json_ints(values: list[Any], arrow: pa.DataType, pg: PgType) -> pa.Array:
    """JSON integers only, in the column's range: `pa.array` would truncate 1.5 to 1, and a wrong number must be
    a dead letter."""
    lo, hi = _INT_BOUNDS[pg.kind]
    for value in values:
        if value is not None:
            if type(value) is not int:
                raise pa.ArrowInvalid(f"expected an integer, got {type(value).__name__}")
            if not lo <= value <= hi:
                raise _out_of_range(value, pg, (lo, hi))
    return pa.array(values, arrow)


def _bounded(arr: pa.Array, pg: PgType, bounds: tuple[int, int]) -> pa.Array:
    """The integer array, unless a value is outside `bounds` (vectorised `_json_ints` range check)."""
    if arr.null_count == len(arr):
        return arr
    low, high = pc.min_max(arr).values()
    if low.as_py() < bounds[0]:
        raise _out_of_range(low.as_py(), pg, bounds)
    if high.as_py() > bounds[1]:
        raise _out_of_range(high.as_py(), pg, bounds)
    return arr


def string_check(pg: PgType) -> Callable[[pa.Array], pa.Array]:
    """A string array as the column holds it: the declared length of varchar(n) and char(n) enforced in
    characters (char(n): without trailing blanks, as Postgres compares, then trimmed to n blanks as Postgres
    stores it), a uuid in its canonical form; anything else raises (a dead letter)."""
    kind = pg.kind
    if kind == "uuid":
        return _uuid_text
    if kind in ("json", "jsonb"):
        return _json_text
    length = pg.length if pg.length is not None else (1 if kind == "char" else None)
    if kind not in ("varchar", "char") or length is None:
        return lambda a: a
    return lambda a: _within_length(a, pg, length)


def _uuid_text(arr: pa.Array) -> pa.Array:
    ok = pc.match_substring_regex(arr, _UUID_RE)
    if not pc.all(pc.or_kleene(ok, pc.is_null(arr))).as_py():
        raise pa.ArrowInvalid("a uuid must be 32 hex digits in groups of 8-4-4-4-12")
    return arr


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_text(arr: pa.Array) -> pa.Array:
    """json/jsonb text must be JSON (a warehouse's JSON or VARIANT column refuses the whole file otherwise).
    orjson decides quickly; what it refuses and JSON allows (a number beyond a double, a lone surrogate escape)
    the standard library accepts; NaN, Infinity and nesting beyond Python's recursion limit are refused."""
    loads = orjson.loads
    if _envelope is None or not len(arr):
        values = arr.to_pylist()
    else:
        scanned = pc.fill_null(arr, "null") if arr.null_count else arr
        _valid, offsets, data = scanned.buffers()
        suspects = _envelope.json_suspects(offsets, data if data is not None else b"", scanned.offset,
                                           len(scanned))
        values = [arr[i].as_py() for i in suspects]
    for value in values:
        if value is None:
            continue
        try:
            loads(value)
        except orjson.JSONDecodeError:
            try:
                json.loads(value, parse_constant=_refuse_constant)
            except (ValueError, RecursionError):
                raise pa.ArrowInvalid("json text that is not JSON") from None
    return arr


def _within_length(arr: pa.Array, pg: PgType, length: int) -> pa.Array:
    longest = pc.max(pc.utf8_length(arr)).as_py()
    if longest is None or longest <= length:
        return arr
    if pg.kind == "char":
        trimmed = pc.max(pc.utf8_length(pc.utf8_rtrim(arr, characters=" "))).as_py()
        if trimmed <= length:  # only blanks beyond n: Postgres stores the value trimmed to n
            return pc.utf8_slice_codeunits(arr, 0, length)
        longest = trimmed
    raise pa.ArrowInvalid(f"{longest} characters, longer than {pg.sql}")


def _json_floats(values: list[Any], arrow: pa.DataType) -> pa.Array:
    """JSON numbers only: `pa.array` would read true as 1.0."""
    for value in values:
        if value is not None and type(value) is not float and type(value) is not int:
            raise pa.ArrowInvalid(f"expected a number, got {type(value).__name__}")
    if arrow == pa.float32():
        return _real(pa.array(values, pa.float64()))
    return pa.array(values, arrow)


def _real(doubles: pa.Array) -> pa.Array:
    """float64 → float32 (real), refusing a finite value beyond real's range (the cast makes it infinite)."""
    reals = doubles.cast(pa.float32())
    if pc.any(pc.and_(pc.is_inf(reals), pc.invert(pc.is_inf(doubles)))).as_py():
        raise pa.ArrowInvalid("a finite value beyond the range of real (about 3.4e38)")
    return reals


def json_converter(pg: PgType) -> Converter:
    """Debezium JSON values (string decimals, ISO timestamptz, epoch-based ints for date/time/timestamp) → Arrow."""
    target = arrow_type(pg)
    kind = pg.kind
    if kind in INT_KINDS:
        return lambda v: _json_ints(v, target, pg)
    if kind in ("real", "double precision"):
        return lambda v: _json_floats(v, target)
    if kind == "boolean":
        return lambda v: pa.array(v, target)
    if kind in _STRING_KINDS:
        checked = string_check(pg)
        return lambda v: checked(pa.array(v, pa.string()))
    if kind == "numeric":
        return lambda v: _decimal_text(pa.array(v, pa.string()), target)
    if kind == "bytea":
        return _json_bytea
    if kind == "date":
        return lambda v: _json_ints(v, pa.int32(), pg).cast(target)
    if kind in ("time", "timestamp"):
        return lambda v: _json_ints(v, pa.int64(), pg).cast(target)
    if kind == "timestamptz":
        zoned = temporal_text(pg, iso=True)
        return lambda v: zoned(pa.array(v, pa.string()))
    raise ValueError(f"no Debezium converter for {pg.sql}")


def json_input_type(pg: PgType) -> pa.DataType:
    """The Arrow type a Debezium JSON value of this column is read as (before `json_finish`)."""
    kind = pg.kind
    if kind == "real":  # read as a double: `json_finish` refuses what real cannot hold instead of an infinity
        return pa.float64()
    if kind in INT_KINDS or kind in ("double precision", "boolean"):
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
    if kind in _STRING_KINDS:
        return string_check(pg)
    if kind == "real":
        return _real
    if kind in INT_KINDS or kind in ("double precision", "boolean"):  # read in their own width
        return lambda a: a
    if kind == "bytea":
        return lambda a: _json_bytea(a.to_pylist())
    if kind == "timestamptz":
        return temporal_text(pg, iso=True)
    if kind == "numeric":
        return lambda a: _decimal_text(a, target)
    if kind in ("date", "time", "timestamp"):
        bounds = _INT_BOUNDS[kind]
        return lambda a: _bounded(a, pg, bounds).cast(target)
    raise ValueError(f"no Debezium converter for {pg.sql}")


def _shown(value: Any) -> str:
    text = value.decode(errors="replace") if isinstance(value, (bytes, bytearray)) else value
    shown = repr(text)
    return shown if len(shown) <= _SHOWN else f"{shown[:_SHOWN]}… ({len(shown)} characters)"


def convert_column(convert: Converter, values: list[Any], name: str, nullable: bool,
                   bad: dict[int, str]) -> pa.Array:
    """Bulk convert; on failure find the bad values one by one, null them, record the rows, convert again.

    `bad` maps a row index to the dead-letter reason of its first failing column.
    """
    try:
        arr = convert(values)
    except CONVERSION_ERRORS:
        values = list(values)
        for i, value in enumerate(values):
            if value is None:
                continue
            try:
                convert([value])
            except Exception as exc:
                bad.setdefault(i, f"column {name!r}: cannot convert {_shown(value)}: {exc}")
                values[i] = None
        arr = convert(values)
    if not nullable and arr.null_count:
        for i in pc.indices_nonzero(arr.is_null()).to_pylist():
            bad.setdefault(i, f"column {name!r} is NOT NULL but the event has no value for it")
    return arr
