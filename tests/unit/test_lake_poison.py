"""No input crashes a decoder (issue 14, item 4): one corpus of poison families, every decoding path, one answer.

The paths: per event (`append_debezium_value`, the reference), the C bulk decoder (`append_debezium_values`), the
msgspec-only bulk path (the C extension patched away), and, for the column-value families a Postgres text row can
carry, the pgoutput text path and the COPY snapshot path (str values, `lsn_override`). Every value ends as a row
or a dead letter with its position and reason; the Debezium paths give the same rows and the same dead letters
(positions and reasons); the text paths give the same rows and dead-letter the same positions for the same column.
Each value is also written alone, first in its batch, through the lake writer (file key, Parquet, dead-letter
store): a value that crashed there, such as a commit time no date can name, stopped a Kafka consumer at its offset
on every restart.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from fsspec.implementations.local import LocalFileSystem

import bankflow.lake.native as native_module
from bankflow.engines.builtin.events import to_debezium_event
from bankflow.lake import _envelope
from bankflow.lake.batch import TableBatch
from bankflow.lake.convert import DATE_DAYS, TIME_US, TIMESTAMP_US
from bankflow.lake.decode import MAX_NESTING, SOURCE_TS_MAX, SOURCE_TS_MIN
from bankflow.lake.positions import KafkaPosition, LsnPosition, format_span
from bankflow.lake.writer import LakeWriter
from bankflow.spec.models import Column, Lake, Table
from tests.fixtures.lake_types import ALL_TYPES, COMMIT_TS, ROWS
from tests.unit.test_lake_native_decoder import _mutate

_NAMES = [c.name for c in ALL_TYPES.columns]
_GOOD_TEXT = [b"1", *ROWS[0][1:]]


def _dumps(event: Any) -> bytes:
    """JSON as Debezium writes it; json, not orjson: orjson refuses integers beyond 64 bits."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def _text_row(**columns: bytes | None) -> list[bytes | None]:
    row = list(_GOOD_TEXT)
    for name, value in columns.items():
        row[_NAMES.index(name)] = value
    return row


def _event_of(row: list[bytes | None], n: int) -> dict[str, Any]:
    """The Debezium event of a text row (as the built-in reader would emit it), id n + 1 unless the family sets
    it, at LSN 900 + n."""
    row = [str(n + 1).encode() if row[0] == _GOOD_TEXT[0] else row[0], *row[1:]]  # keep a poisoned key
    return to_debezium_event(ALL_TYPES, "c", before=None, after=row, lsn=900 + n, xid=77, commit_ts_us=COMMIT_TS,
                             topic_prefix="bank", database="db", schema="public")


# ---------------------------------------------------------------- the corpus

# Column values a Postgres text row can carry too (pgoutput, COPY): (family, text row, ends as a row?)
TEXT_FAMILIES: list[tuple[str, list[bytes | None], bool]] = [
    ("smallint 70000", _text_row(s=b"70000"), False),
    ("smallint -32769", _text_row(s=b"-32769"), False),
    ("smallint at its bounds", _text_row(s=b"-32768"), True),
    ("integer 2^40", _text_row(i=str(2**40).encode()), False),
    ("integer 2^31", _text_row(i=str(2**31).encode()), False),
    ("integer at its bound", _text_row(i=str(-(2**31)).encode()), True),
    ("bigint 2^63", _text_row(id=str(2**63).encode()), False),
    ("bigint 2^70", _text_row(id=str(2**70).encode()), False),
    ("date year 10000", _text_row(d=b"10000-01-01"), False),
    ("date BC", _text_row(d=b"0044-03-15 BC"), False),
    ("date infinity", _text_row(d=b"infinity"), False),
    ("time 24:00:00", _text_row(tm=b"24:00:00"), False),
    ("time 25:00:00", _text_row(tm=b"25:00:00"), False),
    ("time at its end", _text_row(tm=b"23:59:59.999999"), True),
    ("timestamp year 10000", _text_row(ts=b"10000-01-01 00:00:00"), False),
    ("timestamp infinity", _text_row(ts=b"infinity"), False),
    ("timestamptz year 10000", _text_row(tstz=b"10000-01-01 00:00:00+00"), False),
    ("numeric beyond its precision", _text_row(m=b"12345678901234567.00"), False),
    ("numeric beyond its scale", _text_row(m=b"1.234"), False),
    ("numeric 1000 digits", _text_row(m38=b"9" * 1000), False),
    ("numeric NaN", _text_row(m=b"NaN"), False),
    ("varchar(20) with 21 characters", _text_row(v=b"x" * 21), False),
    ("varchar(20) with 21 two-byte characters", _text_row(v=("é" * 21).encode()), False),
    ("varchar(20) with 20 two-byte characters", _text_row(v=("é" * 20).encode()), True),
    ("varchar(20) of 1 MB", _text_row(v=b"y" * 1_000_000), False),
    ("char(3) with 4 characters", _text_row(c=b"abcd"), False),
    ("char(3) with blanks beyond 3", _text_row(c=b"ab     "), True),  # Postgres stores 'ab '
    ("char(3) with 3 characters and blanks", _text_row(c="é中x  ".encode()), True),
    ("char(3) with an inner blank beyond 3", _text_row(c=b"ab c"), False),
    ("uuid malformed", _text_row(u=b"not-a-uuid"), False),
    ("uuid too long", _text_row(u=b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111"), False),
    ("uuid upper case", _text_row(u=b"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"), True),
    ("text of 1 MB", _text_row(t=b"z" * 1_000_000), True),
    ("jsonb that is not JSON", _text_row(j=b"{not json"), False),
    ("jsonb NaN", _text_row(j=b"NaN"), False),
    ("jsonb with a number beyond a double", _text_row(j=b'{"a": 1e999}'), True),
    ("jsonb nested 2000 deep, as text", _text_row(j=b"[" * 2000 + b"]" * 2000), False),
    ("jsonb nested 900 deep, as text", _text_row(j=b"[" * 900 + b"]" * 900), True),
    ("NOT NULL key missing", _text_row(id=None), False),
]


def _nested(k: int) -> str:
    return "[" * k + "]" * k


def _json_families() -> list[tuple[str, bytes, bool]]:
    """Values only Debezium JSON can carry: (family, value, ends as a row?). Nesting levels count the envelope
    object as 1."""
    base = _event_of(_GOOD_TEXT, 0)
    good = _dumps(base)
    after, source = base["after"], base["source"]

    def col(name: str, value: Any) -> bytes:
        return _dumps({**base, "after": {**after, name: value}})

    def src(**fields: Any) -> bytes:
        return _dumps({**base, "source": {**source, **fields}})

    def top(k: int) -> bytes:  # an unknown top-level field nested k deep: 1 + k levels
        return good[:-1] + f',"x":{_nested(k)}}}'.encode()

    def in_source(k: int) -> bytes:  # an unknown field of source nested k deep: 2 + k levels
        return good.replace(b'"source":{', f'"source":{{"x":{_nested(k)},'.encode())

    no_us = {k: v for k, v in source.items() if k != "ts_us"}
    out: list[tuple[str, bytes, bool]] = [
        ("smallint 70000", col("s", 70000), False),
        ("integer 2^40", col("i", 2**40), False),
        ("integer -2^40", col("i", -(2**40)), False),
        ("bigint 2^63", col("id", 2**63), False),
        ("date 2^40 days", col("d", 2**40), False),
        ("date 2^31 days", col("d", 2**31), False),
        ("date a day after 9999", col("d", DATE_DAYS[1] + 1), False),
        ("date 9999-12-31", col("d", DATE_DAYS[1]), True),
        ("date a day before the year 1", col("d", DATE_DAYS[0] - 1), False),
        ("date 0001-01-01", col("d", DATE_DAYS[0]), True),
        ("date Postgres' last, 5874897-12-31", col("d", 2_145_042_905), False),
        ("date Postgres' first, 4714-11-24 BC", col("d", -2_440_588), False),
        ("date Debezium's infinity", col("d", -2_147_472_693), False),
        ("date Debezium's -infinity", col("d", -2_147_472_692), False),
        ("time negative", col("tm", -1), False),
        ("time 24:00:00", col("tm", TIME_US[1] + 1), False),
        ("time 2^62", col("tm", 2**62), False),
        ("time at its end", col("tm", TIME_US[1]), True),
        ("timestamp a µs before the year 1", col("ts", TIMESTAMP_US[0] - 1), False),
        ("timestamp at the year 1", col("ts", TIMESTAMP_US[0]), True),
        ("timestamp at the end of 9999", col("ts", TIMESTAMP_US[1]), True),
        ("timestamp a µs after 9999", col("ts", TIMESTAMP_US[1] + 1), False),
        ("timestamp at 4714 BC", col("ts", -210_866_803_200_000_000), False),
        ("timestamp Debezium's infinity", col("ts", 9_223_372_036_825_200_000), False),  # was a row in 294247
        ("timestamp Debezium's -infinity", col("ts", -9_223_372_036_832_400_000), False),
        ("timestamp at int64's end", col("ts", 2**63 - 1), False),
        ("timestamp beyond int64", col("ts", 2**63), False),
        ("timestamptz year 99999", col("tstz", "99999-01-01T00:00:00Z"), False),
        ("timestamptz +10000", col("tstz", "+10000-01-01T00:00:00Z"), False),
        ("timestamptz year 0 (1 BC)", col("tstz", "0000-06-01T00:00:00Z"), False),  # Arrow reads it: a crash later
        ("timestamptz -0043 (44 BC)", col("tstz", "-0043-03-15T00:00:00Z"), False),
        ("timestamptz infinity", col("tstz", "infinity"), False),
        ("timestamptz at the year 1", col("tstz", "0001-01-01T00:00:00.000000Z"), True),
        ("timestamptz with an offset", col("tstz", "2000-01-01T05:30:00+05:30"), True),
        ("numeric as a JSON number", col("m", 1.5), False),
        ("varchar(20) with 21 characters", col("v", "x" * 21), False),
        ("char(3) with 4 characters", col("c", "abcd"), False),
        ("char(3) with blanks beyond 3", col("c", "ab     "), True),
        ("uuid malformed", col("u", "nope"), False),
        ("source.ts_us 2^62", src(ts_us=2**62), False),
        ("source.ts_us -2^62", src(ts_us=-(2**62)), False),
        ("source.ts_us a µs after 9999", src(ts_us=SOURCE_TS_MAX + 1), False),
        ("source.ts_us at the end of 9999", src(ts_us=SOURCE_TS_MAX), True),
        ("source.ts_us a µs before year 1", src(ts_us=SOURCE_TS_MIN - 1), False),
        ("source.ts_us at year 1", src(ts_us=SOURCE_TS_MIN), True),
        ("source.ts_us beyond int64", src(ts_us=2**63), False),
        ("source.ts_ms 2^50", _dumps({**base, "source": {**no_us, "ts_ms": 2**50}}), False),
        ("source.ts_ms 2^60", _dumps({**base, "source": {**no_us, "ts_ms": 2**60}}), False),
        ("source.lsn negative", src(lsn=-5), False),
        ("source.lsn 2^63", src(lsn=2**63), False),
        ("source.lsn 2^64", src(lsn=2**64), False),
        ("source.txId negative", src(txId=-1), False),
        ("nesting at the bound, top level", top(MAX_NESTING - 1), True),
        ("nesting beyond the bound, top level", top(MAX_NESTING), False),
        ("nesting 1000, top level", top(1000), False),
        ("nesting 1024, top level", top(1024), False),
        ("nesting 2000, top level", top(2000), False),
        ("nesting 100000, top level", top(100_000), False),
        ("nesting at the bound, in source",
         src(x=json.loads(_nested(MAX_NESTING - 2))), True),
        ("nesting beyond the bound, in source", in_source(MAX_NESTING - 1), False),
        ("nesting 1000, in source", in_source(1000), False),
        ("nesting 1000, in before of an insert",
         good.replace(b'"before":null', f'"before":{{"id":{_nested(1000)}}}'.encode()), False),
        ("nesting 1000, as a column value", good.replace(b'"t":"hello"', f'"t":{_nested(1000)}'.encode()), False),
        ("nesting 60, as a column value", good.replace(b'"t":"hello"', f'"t":{_nested(60)}'.encode()), False),
        ("nesting 1000, in an unknown column",
         good.replace(b'"t":"hello"', f'"t":"hello","nope":{_nested(1000)}'.encode()), False),
        ("nesting 1000 of objects", good[:-1] + b',"x":' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}", False),
        ("nesting 1000 in a schemas-enabled wrapper",
         b'{"schema":' + _nested(1000).encode() + b',"payload":' + good + b"}", False),
        ("nesting at the bound in a schemas-enabled wrapper",
         b'{"schema":' + _nested(MAX_NESTING - 1).encode() + b',"payload":' + good + b"}", True),
        ("brackets in strings are not nesting", col("t", "[" * 5000 + "{" * 5000), True),
        ("unbalanced brackets", good[:-1] + b',"x":' + b"[" * 5000 + b"}", False),
    ]
    assert len({name for name, _, _ in out}) == len(out)
    return out


JSON_FAMILIES = _json_families()


def _corpus() -> list[tuple[str, bytes, bool]]:
    """Every family as Debezium JSON: the text ones through `to_debezium_event`, then the JSON-only ones."""
    text = [(f"text: {name}", _dumps(_event_of(row, 0)), row_ok) for name, row, row_ok in TEXT_FAMILIES]
    return text + [(f"json: {name}", value, row_ok) for name, value, row_ok in JSON_FAMILIES]


CORPUS = _corpus()


# ---------------------------------------------------------------- the paths

def _per_event(values: list[bytes], positions: list[Any], table: Table = ALL_TYPES) -> TableBatch:
    batch = TableBatch(table)
    for value, position in zip(values, positions, strict=True):
        batch.append_debezium_value(value, position)
    return batch


def _bulk(values: list[bytes], positions: list[Any], table: Table = ALL_TYPES) -> TableBatch:
    batch = TableBatch(table)
    batch.append_debezium_values(values, positions)
    return batch


def _msgspec_bulk(values: list[bytes], positions: list[Any], table: Table = ALL_TYPES) -> TableBatch:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native_module, "extension", None)
        return _bulk(values, positions, table)


DEBEZIUM_PATHS = {"per-event": _per_event, "c-bulk": _bulk, "msgspec-bulk": _msgspec_bulk}


def _text_path(rows: list[list[bytes | None]], *, snapshot: bool = False) -> TableBatch:
    """The pgoutput reader's way (bytes, one transaction), or the COPY snapshot's (str values, row numbers as
    positions, the consistent point as every row's _lsn), as `bankflow.engines.builtin` drives the batch."""
    batch = TableBatch(ALL_TYPES)
    cols, ops, lsns = batch.text_sink()
    if snapshot:
        batch.begin_text_tx(1000, 77, COMMIT_TS, 900, lsn_override=1000)
    else:
        batch.begin_text_tx(1000, 77, COMMIT_TS, 900)
    for n, row in enumerate(rows):
        row = [str(n + 1).encode() if row[0] == _GOOD_TEXT[0] else row[0], *row[1:]]
        for col, value in zip(cols, row, strict=True):
            col.append(value.decode() if snapshot and value is not None else value)
        ops.append("r" if snapshot else "c")
        lsns.append(900 + n)
    return batch


def _outcome(batch: TableBatch) -> tuple[Any, list[tuple[Any, str]]]:
    table = batch.to_arrow("k")
    return table, sorted(((d.position, d.reason) for d in batch.dead_letters), key=lambda d: d[0])


def _assert_paths_agree(values: list[bytes], positions: list[Any]) -> tuple[Any, list[tuple[Any, str]]]:
    outcomes = {name: path(values, positions) for name, path in DEBEZIUM_PATHS.items()}
    reference = outcomes.pop("per-event")
    expected_table, expected_dead = _outcome(reference)
    for name, batch in outcomes.items():
        table, dead = _outcome(batch)
        assert table.equals(expected_table), name
        assert dead == expected_dead, name
        assert batch.events == reference.events == len(values), name
        assert (batch.first_position, batch.last_position) == (reference.first_position, reference.last_position)
        assert batch.first_source_ts_us == reference.first_source_ts_us, name
    assert expected_table.num_rows + len(expected_dead) == len(values)
    return expected_table, expected_dead


# ---------------------------------------------------------------- the tests

def test_the_c_decoder_bounds_nesting_as_the_python_paths_do() -> None:
    assert native_module.extension is _envelope  # the C path really runs below
    assert _envelope.MAX_DEPTH == MAX_NESTING


@pytest.mark.parametrize(("family", "value", "row_ok"), CORPUS, ids=[name for name, _, _ in CORPUS])
def test_each_family_ends_as_a_row_or_a_dead_letter_alike_on_every_debezium_path(
        family: str, value: bytes, row_ok: bool) -> None:
    good = _dumps(_event_of(_GOOD_TEXT, 1))
    values = [good, value, good]
    table, dead = _assert_paths_agree(values, [KafkaPosition(3, 100 + i) for i in range(3)])
    assert [p.offset for p, _ in dead] == ([] if row_ok else [101]), dead
    assert table.num_rows == (3 if row_ok else 2)


def test_the_whole_corpus_in_one_stream_inside_large_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import bankflow.lake.decode as decode_module

    monkeypatch.setattr(decode_module, "_BULK_LEAF", 4)
    rng = random.Random(14)
    good = [_dumps(_event_of(_GOOD_TEXT, n)) for n in range(40)]
    values: list[bytes] = []
    bad_at = []
    for _name, value, row_ok in CORPUS:
        values.extend(rng.choice(good) for _ in range(rng.randint(0, 9)))
        if not row_ok:
            bad_at.append(len(values))
        values.append(value)
    _table, dead = _assert_paths_agree(values, [KafkaPosition(0, i) for i in range(len(values))])
    assert [p.offset for p, _ in dead] == bad_at


@pytest.mark.parametrize("path", list(DEBEZIUM_PATHS))
def test_each_family_first_in_its_batch_reaches_the_lake_without_a_crash(path: str, tmp_path: Path) -> None:
    """The file key names the first event's commit date: a commit time no date can name was the crash."""
    writer = LakeWriter(LocalFileSystem(auto_mkdir=True), str(tmp_path),
                        Lake(url=f"file://{tmp_path}", layout="{table}/date={date}"))
    for n, (family, value, row_ok) in enumerate(CORPUS):
        position = KafkaPosition(0, n)
        batch = DEBEZIUM_PATHS[path]([value], [position])
        key = writer.key_for(batch)
        assert f"-{format_span(position, position)}.parquet" in key
        written = writer.write_batch(batch)
        assert (written.rows, written.dead_letters) == ((1, 0) if row_ok else (0, 1)), family
        assert (written.key is not None) == row_ok
    records = writer.dead_letters.read_all()
    assert len(records) == sum(not ok for _, _, ok in CORPUS)
    assert all(r["reason"] and "offset" in r["position"] for r in records)


@pytest.mark.parametrize("snapshot", [False, True], ids=["pgoutput", "copy-snapshot"])
def test_the_text_paths_end_each_family_as_the_debezium_paths_do(snapshot: bool) -> None:
    rows = [row for _name, row, _ok in TEXT_FAMILIES]
    text = _text_path(rows, snapshot=snapshot)
    table = text.to_arrow("k")
    dead = sorted(text.dead_letters, key=lambda d: d.position)
    expected = [LsnPosition(1000, 900 + n) for n, (_name, _row, ok) in enumerate(TEXT_FAMILIES) if not ok]
    assert [d.position for d in dead] == expected
    # the same rows through Debezium JSON, at the same positions: the same rows, the same columns blamed
    values = [_dumps(_event_of(row, n)) for n, row in enumerate(rows)]
    json_table, json_dead = _assert_paths_agree(values, [LsnPosition(1000, 900 + n) for n in range(len(rows))])
    assert [p for p, _ in json_dead] == expected
    for (_, json_reason), text_dead in zip(json_dead, dead, strict=True):
        assert json_reason.split(":")[0] == text_dead.reason.split(":")[0], (json_reason, text_dead.reason)
    if snapshot:  # snapshot rows carry op r and the consistent point as _lsn
        assert set(table["_op"].to_pylist()) == {"r"} and set(table["_lsn"].to_pylist()) == {1000}
        table = table.drop_columns(["_op", "_lsn"])
        json_table = json_table.drop_columns(["_op", "_lsn"])
    assert table.equals(json_table)
    kept = {r["c"] for r in table.select(["c"]).to_pylist()}
    assert "ab " in kept and "é中x" in kept  # char(3): blanks beyond 3 trimmed, as Postgres stores it



# ---------------------------------------------------------------- dates and timestamps: the years 1 to 9999

_EPOCH = datetime(1970, 1, 1)
_CYCLE_DAYS = 146_097  # the proleptic Gregorian calendar repeats every 400 years


def _days_and_clock(text: str) -> tuple[int, int]:
    """(days since 1970-01-01, µs into the day) of Postgres text (DateStyle=ISO, offset +00), in any year: the
    year shifted by 400-year cycles into `datetime`'s range (an independent reckoning from the one under test)."""
    bc = text.endswith(" BC")
    body = text.removesuffix(" BC").removesuffix("+00")
    date_part, _, clock = body.partition(" ")
    year_text, month, day = date_part.rsplit("-", 2)
    year = 1 - int(year_text) if bc else int(year_text)
    cycles = (5000 - year) // 400
    shifted = datetime.fromisoformat(f"{year + 400 * cycles:04d}-{month}-{day} {clock or '00:00:00'}")
    delta = shifted - _EPOCH
    return delta.days - cycles * _CYCLE_DAYS, delta.seconds * 1_000_000 + delta.microseconds


def _iso_year(year: int) -> str:
    """A year as Java's ISO_LOCAL_DATE writes it (Debezium's ZonedTimestamp): +10000, 2024, 0000, -0043."""
    return f"+{year}" if year > 9999 else f"{year:04d}" if year >= 0 else f"-{-year:04d}"


def _debezium_image(kind: str, text: str) -> Any:
    """Debezium 3.x's JSON value of a Postgres date, timestamp or timestamptz text (adaptive_time_microseconds):
    days, µs since 1970-01-01, or ZonedTimestamp's ISO text in UTC; infinity as Debezium writes it."""
    if text in ("infinity", "-infinity"):
        sign = text == "infinity"
        return {"date": -2_147_472_693 if sign else -2_147_472_692,
                "timestamp": 9_223_372_036_825_200_000 if sign else -9_223_372_036_832_400_000}.get(kind, text)
    days, clock = _days_and_clock(text)
    if kind == "date":
        return days
    if kind == "timestamp":
        return days * 86_400_000_000 + clock
    year, month_day = int(text.split("-")[0]), text.split(" ")[0][-6:]
    year = 1 - year if text.endswith(" BC") else year
    seconds, fraction = divmod(clock, 1_000_000)
    return (f"{_iso_year(year)}{month_day}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
            f".{fraction:06d}Z")


_BEFORE, _AFTER = "(before the year 1)", "(after the year 9999)"
# (column, Postgres text, what it ends as: the exact value of its row, or the words its dead letter's reason says)
TEMPORAL: list[tuple[str, str, Any]] = [
    ("d", "0001-01-01", date(1, 1, 1)),
    ("d", "9999-12-31", date(9999, 12, 31)),
    ("d", "1582-10-10", date(1582, 10, 10)),  # proleptic Gregorian, as Postgres: no Julian gap
    ("d", "2024-02-29", date(2024, 2, 29)),
    ("d", "0001-12-31 BC", f"0001-12-31 BC cannot be carried in a date column {_BEFORE}"),
    ("d", "0044-03-15 BC", f"0044-03-15 BC cannot be carried in a date column {_BEFORE}"),
    ("d", "4714-11-24 BC", f"4714-11-24 BC cannot be carried in a date column {_BEFORE}"),
    ("d", "10000-01-01", f"10000-01-01 cannot be carried in a date column {_AFTER}"),
    ("d", "5874897-12-31", f"5874897-12-31 cannot be carried in a date column {_AFTER}"),
    ("d", "infinity", "infinity cannot be carried in a date column (Arrow's date32[day] has no infinity)"),
    ("d", "-infinity", "-infinity cannot be carried in a date column (Arrow's date32[day] has no -infinity)"),
    ("ts", "0001-01-01 00:00:00", datetime(1, 1, 1)),
    ("ts", "9999-12-31 23:59:59.999999", datetime(9999, 12, 31, 23, 59, 59, 999_999)),
    ("ts", "1969-12-31 23:59:59.000001", datetime(1969, 12, 31, 23, 59, 59, 1)),
    ("ts", "0001-12-31 23:59:59.999999 BC",
     f"0001-12-31 23:59:59.999999 BC cannot be carried in a timestamp column {_BEFORE}"),
    ("ts", "2000-01-01 00:00:00 BC", f"2000-01-01 00:00:00 BC cannot be carried in a timestamp column {_BEFORE}"),
    ("ts", "10000-01-01 00:00:00", f"10000-01-01 00:00:00 cannot be carried in a timestamp column {_AFTER}"),
    ("ts", "100000-07-01 12:00:00.5", f"100000-07-01 12:00:00.5 cannot be carried in a timestamp column {_AFTER}"),
    ("ts", "infinity", "infinity cannot be carried in a timestamp column (Arrow's timestamp[us] has no infinity)"),
    ("ts", "-infinity", "-infinity cannot be carried in a timestamp column (Arrow's timestamp[us] has no -infinity)"),
    ("tstz", "0001-01-01 00:00:00+00", datetime(1, 1, 1, tzinfo=timezone.utc)),
    ("tstz", "9999-12-31 23:59:59.999999+00", datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc)),
    ("tstz", "2000-01-01 00:00:00.123456+00", datetime(2000, 1, 1, 0, 0, 0, 123_456, tzinfo=timezone.utc)),
    ("tstz", "0001-12-31 23:59:59.999999+00 BC",  # Debezium: "0000-12-31T…": Arrow reads year 0, Python cannot
     f"0001-12-31 23:59:59.999999+00 BC cannot be carried in a timestamptz column {_BEFORE}"),
    ("tstz", "0044-03-15 12:00:00+00 BC",
     f"0044-03-15 12:00:00+00 BC cannot be carried in a timestamptz column {_BEFORE}"),
    ("tstz", "10000-01-01 00:00:00+00", f"10000-01-01 00:00:00+00 cannot be carried in a timestamptz column {_AFTER}"),
    ("tstz", "infinity",
     "infinity cannot be carried in a timestamptz column (Arrow's timestamp[us, tz=UTC] has no infinity)"),
    ("tstz", "-infinity",
     "-infinity cannot be carried in a timestamptz column (Arrow's timestamp[us, tz=UTC] has no -infinity)"),
]
_KINDS = {"d": "date", "ts": "timestamp", "tstz": "timestamptz"}


def test_the_debezium_images_are_debeziums() -> None:
    """The corpus's Debezium values, checked against values Debezium is known to write."""
    assert _debezium_image("date", "1970-01-02") == 1 and _debezium_image("date", "0001-01-01") == -719_162
    assert _debezium_image("date", "0001-12-31 BC") == -719_163  # 1 BC is year 0, a leap year
    assert _debezium_image("timestamp", "1969-12-31 23:59:59.000001") == -999_999
    assert _debezium_image("timestamptz", "2000-01-01 00:00:00+00") == "2000-01-01T00:00:00.000000Z"
    assert _debezium_image("timestamptz", "0044-03-15 12:00:00+00 BC") == "-0043-03-15T12:00:00.000000Z"
    assert _debezium_image("timestamptz", "10000-01-01 00:00:00+00") == "+10000-01-01T00:00:00.000000Z"


def _temporal_stream() -> tuple[list[list[bytes | None]], list[bytes], list[int]]:
    """The corpus among good rows: text rows, their Debezium values, and the indexes of the corpus's rows."""
    rows: list[list[bytes | None]] = []
    values: list[bytes] = []
    at: list[int] = []
    for name, text, _expected in TEMPORAL:
        for _ in range(2):  # a good row before each, so a dead letter never shifts a neighbour
            rows.append(list(_GOOD_TEXT))
        at.append(len(rows))
        rows.append(_text_row(**{name: text.encode()}))
    for n in range(len(rows)):
        event = _event_of(_GOOD_TEXT, n)
        if n in at:
            name, text, _ = TEMPORAL[at.index(n)]
            event["after"][name] = _debezium_image(_KINDS[name], text)
        values.append(_dumps(event))
    return rows, values, at


def _explained(reason: str) -> str:
    """A dead-letter reason without its value as the path read it (text, days, µs or ISO): what it says of it."""
    head, _, why = reason.partition(": cannot convert ")
    return head + ": " + why.split(": ", 1)[1]


@pytest.mark.parametrize("snapshot", [False, True], ids=["pgoutput", "copy-snapshot"])
def test_dates_and_timestamps_end_alike_on_every_path(snapshot: bool) -> None:
    """BC, beyond 9999 and ±infinity, in dates and timestamps with and without zone: the same rows with the same
    exact values, the same dead letters at the same positions, for the same reason, on all five paths."""
    rows, values, at = _temporal_stream()
    text = _text_path(rows, snapshot=snapshot)
    text_table = text.to_arrow("k")
    text_dead = sorted(text.dead_letters, key=lambda d: d.position)
    json_table, json_dead = _assert_paths_agree(values, [LsnPosition(1000, 900 + n) for n in range(len(rows))])

    bad = [n for n, (_name, _text, expected) in zip(at, TEMPORAL, strict=True) if isinstance(expected, str)]
    assert [d.position for d in text_dead] == [p for p, _ in json_dead] == [LsnPosition(1000, 900 + n) for n in bad]
    reasons = {n: expected for n, (_name, _t, expected) in zip(at, TEMPORAL, strict=True) if n in bad}
    for n, text_letter, (_, json_reason) in zip(bad, text_dead, json_dead, strict=True):
        column = TEMPORAL[at.index(n)][0]
        assert text_letter.reason.startswith(f"column {column!r}: cannot convert {TEMPORAL[at.index(n)][1]!r}: ")
        assert reasons[n] in text_letter.reason and "years 1 to 9999" in text_letter.reason
        assert _explained(json_reason) == _explained(text_letter.reason), (json_reason, text_letter.reason)

    if snapshot:
        text_table = text_table.drop_columns(["_op", "_lsn"])
        json_table = json_table.drop_columns(["_op", "_lsn"])
    assert text_table.equals(json_table)
    kept = {r["id"]: r for r in text_table.select(["id", "d", "ts", "tstz"]).to_pylist()}  # Python can read all
    for n, (name, _text, expected) in zip(at, TEMPORAL, strict=True):
        if not isinstance(expected, str):
            assert kept[n + 1][name] == expected, (name, _text)
    assert len(kept) == len(rows) - len(bad)


def test_the_c_decoder_refuses_dates_and_timestamps_beyond_the_years() -> None:
    """It stops at them (the Python paths then say why) and takes the years' first and last values."""
    _rows, values, at = _temporal_stream()
    taken = list(_scan([values[n] for n in at]))
    for (name, text, expected), count in zip(TEMPORAL, taken, strict=True):
        if name != "tstz":  # a timestamptz is a string to the C decoder: its cast refuses it
            assert count == (0 if isinstance(expected, str) else 1), (name, text)


def test_the_years_first_and_last_values_load_into_duckdb_exactly(tmp_path: Path) -> None:
    """What the lake carries, a warehouse reads back: the edge rows through the lake writer's Parquet into DuckDB."""
    import duckdb

    rows, _values, at = _temporal_stream()
    writer = LakeWriter(LocalFileSystem(auto_mkdir=True), str(tmp_path),
                        Lake(url=f"file://{tmp_path}", layout="{table}/date={date}"))
    written = writer.write_batch(_text_path(rows))
    bad = sum(isinstance(expected, str) for _n, _t, expected in TEMPORAL)
    assert (written.rows, written.dead_letters) == (len(rows) - bad, bad) and written.key is not None
    path = str(tmp_path / written.key.split(str(tmp_path))[-1].lstrip("/"))
    with duckdb.connect() as db:
        db.execute("SET TimeZone = 'UTC'")
        got = dict(((i, c), v) for i, *cols in db.execute(f"SELECT id, d, ts, tstz FROM '{path}'").fetchall()
                   for c, v in zip(("d", "ts", "tstz"), cols, strict=True))
    for n, (name, _text, expected) in zip(at, TEMPORAL, strict=True):
        if not isinstance(expected, str):
            assert got[(n + 1, name)] == expected, (name, _text)


def test_random_corruptions_of_the_corpus_agree_on_every_path() -> None:
    """The mutation fuzz of `test_lake_native_decoder`, on the poison corpus and the good values, all paths."""
    rng = random.Random(20261201)
    sources = [value for _, value, _ in CORPUS if len(value) < 20_000]
    sources += [_dumps(_event_of(_GOOD_TEXT, n)) for n in range(10)]
    values = [_mutate(rng.choice(sources), rng) if rng.random() < 0.6 else rng.choice(sources)
              for _ in range(1500)]
    _table, dead = _assert_paths_agree(values, [KafkaPosition(1, i) for i in range(len(values))])
    assert 0 < len(dead) < len(values)


def _scan(values: list[bytes]) -> Iterator[int]:
    """How many leading values the C decoder takes, for each value alone."""
    decoder = native_module.NativeDecoder(ALL_TYPES)
    for value in values:
        yield decoder.decode([value])[0]


def test_the_c_decoder_takes_what_fits_and_leaves_the_rest_to_the_python_paths() -> None:
    """It stops at a value out of its column's bounds instead of raising (the poison message that was)."""
    taken = dict(zip([name for name, _, _ in CORPUS], _scan([v for _, v, _ in CORPUS]), strict=True))
    for name in ("json: smallint 70000", "json: integer 2^40", "json: date 2^40 days", "json: time 2^62",
                 "json: date Debezium's infinity", "json: timestamp Debezium's infinity",
                 "json: date a day after 9999", "json: timestamp a µs before the year 1",
                 "json: source.lsn negative", "json: source.txId negative", "json: source.ts_us 2^62",
                 "json: nesting beyond the bound, top level", "json: nesting beyond the bound, in source"):
        assert taken[name] == 0, name
    for name in ("json: date 9999-12-31", "json: time at its end", "json: source.ts_us at the end of 9999",
                 "json: nesting at the bound, top level", "json: nesting at the bound, in source"):
        assert taken[name] == 1, name


FLOATS = Table(name="floats", primary_key=["id"], columns=[
    Column(name="id", type="bigint", nullable=False), Column(name="r", type="real"),
    Column(name="x", type="double precision")])


def test_a_double_beyond_real_is_a_dead_letter_not_an_infinity() -> None:
    """pyarrow casts 1e300 to a real's infinity without a word; Postgres' real cannot hold it."""
    def value(n: int, r: Any) -> bytes:
        return _dumps({"op": "c", "after": {"id": n, "r": r, "x": 1e300}, "source": {"lsn": n, "ts_us": 0}})

    values = [value(0, 1.5), value(1, 1e300), value(2, -3.4e38), value(3, 3.5e38), value(4, None)]
    positions = [KafkaPosition(0, n) for n in range(len(values))]
    outcomes = [_outcome(path(values, positions, FLOATS)) for path in DEBEZIUM_PATHS.values()]
    (table, dead), *others = outcomes
    assert all(t.equals(table) and d == dead for t, d in others)
    assert [p.offset for p, _ in dead] == [1, 3] and "range of real" in dead[0][1]
    assert table["x"].to_pylist() == [1e300] * 3
    text = TableBatch(FLOATS)
    cols, ops, lsns = text.text_sink()
    text.begin_text_tx(1, 1, 0, 0)
    for n, r in enumerate([b"1e300", b"Infinity", b"NaN", b"-3.4e38", b"1.5"]):
        for col, v in zip(cols, [str(n).encode(), r, b"1e300"], strict=True):
            col.append(v)
        ops.append("c")
        lsns.append(n)
    rows = text.to_arrow("k")
    assert [d.position.lsn for d in text.dead_letters] == [0] and rows.num_rows == 4


def _edges(low: int, high: int) -> list[int]:
    return [low - 1, low, low + 1, high - 1, high, high + 1, 0, -1, 2**31, 2**40, -(2**63), 2**63 - 1]


_VALUE_POOLS: dict[str, list[Any]] = {
    "id": [None, 1, 2**63 - 1, -(2**63)],
    "i": _edges(-(2**31), 2**31 - 1),
    "s": _edges(-(2**15), 2**15 - 1),
    "d": [*_edges(*DATE_DAYS), -2_147_472_693, -2_147_472_692, -2_440_588, 2_145_042_905],
    "tm": _edges(*TIME_US),
    "ts": [*_edges(*TIMESTAMP_US), 9_223_372_036_825_200_000, -9_223_372_036_832_400_000, 2**62],
    "tstz": ["0001-01-01T00:00:00Z", "0000-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z", "infinity",
             "+10000-01-01T00:00:00Z", "-0043-03-15T00:00:00.000000Z", "-infinity", "2000-01-01T00:00:00+01:00"],
    "v": ["", "x" * 19, "x" * 20, "x" * 21, "é" * 20, "é" * 21, "x" * 20 + " "],
    "c": ["", "a", "abc", "abcd", "ab ", "abc ", "abc    ", " abc", "中中中", "中中中中"],
    "u": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", "x" * 36],
    "j": ["{}", "[1,]", "", "null", '{"a": 1e999}', "NaN"],
    "m": ["0", "9999999999999999.99", "10000000000000000.00", "1.234", "-0.01", "9" * 39, "1e3"],
    "m38": ["9" * 28 + "." + "9" * 10, "9" * 29, "0." + "0" * 9 + "1", "0." + "0" * 10 + "1", "9" * 600],
}
_SOURCE_POOLS: dict[str, list[Any]] = {
    "lsn": [0, 1, -1, 2**63 - 1, 2**63, None],
    "txId": [None, 0, -1, 2**63 - 1],
    "ts_us": [None, 0, SOURCE_TS_MIN, SOURCE_TS_MIN - 1, SOURCE_TS_MAX, SOURCE_TS_MAX + 1, 2**62, -(2**62)],
    "ts_ms": [None, 0, SOURCE_TS_MAX // 1000, SOURCE_TS_MAX // 1000 + 1, 2**60, -(2**60)],
}


def test_random_values_at_every_bound_agree_on_every_path() -> None:
    """Events with a few columns and source fields drawn at and around every bound, in one stream."""
    rng = random.Random(141)
    base = _event_of(_GOOD_TEXT, 0)
    values = []
    for n in range(2500):
        after = {**base["after"], "id": n + 1}
        for name in rng.sample(list(_VALUE_POOLS), rng.randint(0, 3)):
            after[name] = rng.choice(_VALUE_POOLS[name])
        source = dict(base["source"])
        for name in rng.sample(list(_SOURCE_POOLS), rng.randint(0, 2)):
            source[name] = rng.choice(_SOURCE_POOLS[name])
            if source[name] is None:
                del source[name]
        values.append(_dumps({**base, "after": after, "source": source}))
    table, dead = _assert_paths_agree(values, [KafkaPosition(2, i) for i in range(len(values))])
    assert 300 < len(dead) < 2200
    assert pc.max(pc.utf8_length(table["v"])).as_py() <= 20 and pc.max(pc.utf8_length(table["c"])).as_py() <= 3
    assert pc.min(table["_lsn"]).as_py() >= 0


def test_a_text_batch_with_a_commit_time_no_date_can_name_still_gets_a_key(tmp_path: Path) -> None:
    batch = TableBatch(ALL_TYPES)
    batch.append_text_row("c", _GOOD_TEXT, LsnPosition(5, 4), 1, 2**62)
    assert batch.first_source_ts_us is None
    writer = LakeWriter(LocalFileSystem(auto_mkdir=True), str(tmp_path),
                        Lake(url=f"file://{tmp_path}", layout="{table}/date={date}"))
    written = writer.write_batch(batch)
    assert written.rows == 1 and written.key is not None and "/date=unknown/" in written.key


def test_a_str_value_with_a_lone_surrogate_reaches_the_dead_letter_store(tmp_path: Path) -> None:
    """orjson refuses to write a lone surrogate: the dead letter's text keeps it escaped instead."""
    good = _dumps(_event_of(_GOOD_TEXT, 0)).decode()
    lone = good.replace('"t":"hello"', '"t":"a\ud800b"')
    writer = LakeWriter(LocalFileSystem(auto_mkdir=True), str(tmp_path),
                        Lake(url=f"file://{tmp_path}", layout="{table}/date={date}"))
    for path in DEBEZIUM_PATHS.values():
        batch = path([good, lone], [KafkaPosition(0, 0), KafkaPosition(0, 1)])  # type: ignore[list-item]
        written = writer.write_batch(batch)
        assert (written.rows, written.dead_letters) == (1, 1)
    [record, *_] = writer.dead_letters.read_all()
    assert "\\ud800" in record["event"] and "malformed JSON" in record["reason"]


def test_what_the_c_json_scan_accepts_is_json() -> None:
    """`json_suspects` only narrows the json check: every string it accepts must parse."""
    rng = random.Random(7)
    seeds = [b'{"k": [1, 2.50, "x"], "e": "\\u00e9\\n", "n": null}', b'[{"a":{"b":[true,false,-0.5e-3]}}, "s"]']
    texts = [_mutate(rng.choice(seeds), rng) if rng.random() < 0.8 else rng.choice(seeds) for _ in range(5000)]
    texts = [t for t in texts if t.decode("utf-8", "ignore").encode() == t]  # Arrow strings are valid UTF-8
    arr = pa.array([t.decode() for t in texts], pa.string())
    suspects = set(_envelope.json_suspects(arr.buffers()[1], arr.buffers()[2], arr.offset, len(arr)))
    accepted = [t for i, t in enumerate(texts) if i not in suspects]
    assert len(accepted) > 500 and len(suspects) > 500
    for text in accepted:
        json.loads(text)
    sliced = arr.slice(10, 100)
    assert _envelope.json_suspects(sliced.buffers()[1], sliced.buffers()[2], sliced.offset, 100) == \
        [i - 10 for i in sorted(suspects) if 10 <= i < 110]
