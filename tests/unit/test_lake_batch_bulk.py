"""The bulk path (`append_debezium_values`) gives what the per-event path gives: rows, dead letters, positions."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from bankflow.engines.builtin.events import to_debezium_event
from bankflow.lake.batch import TableBatch
from bankflow.lake.positions import KafkaPosition
from tests.fixtures.lake_types import ALL_TYPES, COMMIT_TS, ROWS
from tests.fixtures.lake_types import text_batch as _text_batch


@pytest.fixture(autouse=True, params=["c-decoder", "msgspec-only"])
def bulk_decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the C decoder in front and with msgspec alone (tables it cannot read)."""
    if request.param == "msgspec-only":
        import bankflow.lake.native as native_module

        monkeypatch.setattr(native_module, "extension", None)
    return str(request.param)


def _event(n: int, op: str = "c", row: list[Any] | None = None) -> dict[str, Any]:
    row = ROWS[n % len(ROWS)] if row is None else row
    event = to_debezium_event(ALL_TYPES, op, before=row if op in ("d", "u") else None,
                              after=None if op == "d" else row, lsn=900 + n, xid=77, commit_ts_us=COMMIT_TS,
                              topic_prefix="bank", database="db", schema="public")
    event["after" if op != "d" else "before"]["id"] = n + 1
    return event


def _both(values: list[bytes | str]) -> tuple[TableBatch, TableBatch]:
    """(per-event batch, bulk batch) fed the same values at offsets 100, 101, …"""
    positions = [KafkaPosition(3, 100 + i) for i in range(len(values))]
    one = TableBatch(ALL_TYPES)
    for value, position in zip(values, positions, strict=True):
        one.append_debezium_value(value, position)
    bulk = TableBatch(ALL_TYPES)
    bulk.append_debezium_values(values, positions)
    return one, bulk


def _assert_same(one: TableBatch, bulk: TableBatch) -> None:
    assert bulk.events == one.events  # rows may differ until to_arrow: bulk chunks are converted on arrival
    assert bulk.first_position == one.first_position and bulk.last_position == one.last_position
    assert bulk.first_source_ts_us == one.first_source_ts_us
    expected = one.to_arrow("k")
    got = bulk.to_arrow("k")
    assert got.schema == expected.schema
    assert got.equals(expected)
    assert bulk.rows == one.rows == got.num_rows
    # the store writes dead letters in position order; the lists may differ in when each was found
    assert sorted([(d.position, d.reason, d.event) for d in bulk.dead_letters], key=lambda d: d[0]) == \
        sorted([(d.position, d.reason, d.event) for d in one.dead_letters], key=lambda d: d[0])


def test_bulk_matches_per_event_and_text_fast_path() -> None:
    events = [_event(n, op) for n, op in enumerate(["c", "u", "d"])]
    for event, n in zip(events, range(3), strict=True):
        event["after" if event["op"] != "d" else "before"]["id"] = n + 1
    values = [orjson.dumps(e) for e in events]
    one, bulk = _both(values)
    assert not bulk.dead_letters and bulk.rows == 3
    fast = _text_batch([[str(n + 1).encode(), *row[1:]] for n, row in enumerate(ROWS)], ["c", "u", "d"])
    table = bulk.to_arrow("k")
    assert table.equals(fast.to_arrow("k"))
    assert table.equals(one.to_arrow("k"))


def _bad_values() -> list[bytes | str]:
    good = _event(0)
    values: list[bytes | str] = []

    def add(event: Any) -> None:
        values.append(orjson.dumps(event))

    add(good)
    values.append(b"{not json")
    add([1, 2])
    add({**good, "op": "x"})
    add({**good, "after": {**good["after"], "nope": 1}})  # unknown column
    add({**good, "after": {**good["after"], "id": "3"}})  # wrong type
    add({**good, "after": {**good["after"], "m": "12345678901234567.00"}})  # too many digits for numeric(18,2)
    add({**good, "after": {**good["after"], "m": 1.5}})  # numeric as a JSON number
    add({**good, "after": {**good["after"], "id": None}})  # NOT NULL key
    add({**good, "source": {"txId": 1}})  # no lsn
    add({"op": "d", "before": None, "after": None, "source": {"lsn": 1}})
    add({"schema": {}, "payload": _event(5)})  # JsonConverter schemas.enable=true
    add({**good, "after": {**good["after"], "raw": "not base64!"}})
    add({**good, "after": {**good["after"], "d": "infinity"}})
    del good["source"]["ts_us"]  # ts_ms only
    add(good)
    values.append(orjson.dumps(_event(7)).decode())  # str values work too
    return values


def test_bad_values_dead_letter_exactly_as_the_per_event_path() -> None:
    one, bulk = _both(_bad_values())
    _assert_same(one, bulk)
    assert len(bulk.dead_letters) == 12 and bulk.events == 16
    reasons = " ".join(d.reason for d in bulk.dead_letters)
    for expected in ("malformed JSON", "not a JSON object", "unknown op", "unknown column", "precision",
                     "NOT NULL", "no source.lsn", "base64"):
        assert expected in reasons
    assert bulk.dead_letters[0].position == KafkaPosition(3, 101)
    assert bulk.dead_letters[0].event == "{not json"


@pytest.mark.parametrize("bad_at", [0, 137, 299])
def test_one_bad_event_in_a_large_chunk_keeps_everything_else_in_order(bad_at: int) -> None:
    values: list[bytes | str] = [orjson.dumps(_event(n)) for n in range(300)]
    values[bad_at] = b'{"op": "c", "after": {"id": "oops"}, "source": {"lsn": 1}}'
    one, bulk = _both(values)
    _assert_same(one, bulk)
    assert [d.position.offset for d in bulk.dead_letters] == [100 + bad_at]
    assert bulk.rows == 299
    expected = [n + 1 for n in range(300) if n != bad_at]
    assert bulk.to_arrow("k")["id"].to_pylist() == expected


def test_bulk_and_per_event_calls_interleave_in_order() -> None:
    values = [orjson.dumps(_event(n)) for n in range(10)]
    positions = [KafkaPosition(0, i) for i in range(10)]
    batch = TableBatch(ALL_TYPES)
    batch.append_debezium_values(values[:3], positions[:3])
    batch.append_debezium_value(values[3], positions[3])
    batch.append_debezium_value(b"[]", positions[4])
    batch.append_debezium_values(values[5:], positions[5:])
    assert batch.append_debezium_values([], []) == 0
    assert batch.events == 10 and batch.rows == 9
    assert batch.first_position == KafkaPosition(0, 0) and batch.last_position == KafkaPosition(0, 9)
    table = batch.to_arrow("k")
    assert table["id"].to_pylist() == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert [d.position for d in batch.dead_letters] == [KafkaPosition(0, 4)]
    with pytest.raises(ValueError):
        batch.append_debezium_values(values[:2], positions[:1])


def test_bulk_bytes_and_flush_policy_still_work() -> None:
    batch = TableBatch(ALL_TYPES)
    batch.append_debezium_values([orjson.dumps(_event(n)) for n in range(50)],
                                 [KafkaPosition(0, i) for i in range(50)])
    assert batch.approx_bytes > 50
    assert batch.rows == 50 and batch.events == 50
    batch.clear()
    assert batch.empty and batch.rows == 0 and batch.approx_bytes == 0


def test_pieces_and_splits_keep_order_across_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    import bankflow.lake.decode as decode_module

    monkeypatch.setattr(decode_module, "_BULK_PIECE", 7)
    monkeypatch.setattr(decode_module, "_BULK_LEAF", 2)
    values: list[bytes | str] = [orjson.dumps(_event(n)) for n in range(40)]
    for bad in (6, 7, 20, 21, 39):
        values[bad] = b"{broken"
    one, bulk = _both(values)
    _assert_same(one, bulk)
    assert [d.position.offset - 100 for d in bulk.dead_letters] == [6, 7, 20, 21, 39]


def _strict_values() -> list[bytes | str]:
    """Values a lenient parser would coerce (1.5 → 1, true → 1, "3" → 3): both paths dead-letter them."""
    good = _event(0)
    after = good["after"]
    cases: list[Any] = [
        {**good, "after": {**after, "i": 1.5}},
        {**good, "after": {**after, "i": 2.0}},
        {**good, "after": {**after, "s": True}},
        {**good, "after": {**after, "id": 2**70}},  # beyond int64
        {**good, "after": {**after, "b": 1}},
        {**good, "after": {**after, "d": 19000.5}},
        {**good, "after": {**after, "t": 12}},
        {**good, "source": {**good["source"], "lsn": "123"}},
        {**good, "source": {**good["source"], "txId": 1.5}},
        {**good, "source": {**good["source"], "ts_us": "soon"}},
        {**good, "source": None},
        {"op": "d", "before": {**after, "nope": 1}, "source": good["source"]},  # unknown column, delete image
    ]
    values: list[bytes | str] = [json.dumps(c).encode() for c in cases]  # orjson refuses ints beyond 64 bits
    # accepted by both: an unknown column in `before` of an insert is never read; ts_ms alone; a wrapped payload
    values.append(orjson.dumps({**good, "before": {"whatever": [1, 2]}}))
    values.append(orjson.dumps({**good, "source": {"lsn": 5, "txId": None, "ts_ms": 1_700_000_000_000}}))
    values.append(orjson.dumps({"schema": {"type": "struct"}, "payload": _event(9, "d")}))
    return values


def test_strict_types_dead_letter_in_both_paths_and_nothing_is_truncated() -> None:
    values = _strict_values()
    one, bulk = _both(values)
    _assert_same(one, bulk)
    dead = sorted(bulk.dead_letters, key=lambda d: d.position)
    assert [d.position.offset - 100 for d in dead] == list(range(12))
    reasons = [d.reason for d in dead]
    assert "expected an integer, got float" in reasons[0] and "expected an integer, got float" in reasons[1]
    assert "source.lsn must be an integer" in reasons[7]
    assert "source.txId must be an integer" in reasons[8]
    assert "source.ts_us must be an integer" in reasons[9]
    assert "unknown column" in reasons[11]
    table = bulk.to_arrow("k")
    assert table.num_rows == 3
    assert table["_lsn"].to_pylist()[1] == 5
    assert table["_source_ts"].to_pylist()[1].timestamp() == 1_700_000_000


def test_strict_values_inside_large_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import bankflow.lake.decode as decode_module

    monkeypatch.setattr(decode_module, "_BULK_LEAF", 4)
    values: list[bytes | str] = [orjson.dumps(_event(n)) for n in range(200)]
    strict = _strict_values()
    for k, value in enumerate(strict):
        values[7 + 13 * k] = value
    one, bulk = _both(values)
    _assert_same(one, bulk)
    assert len(bulk.dead_letters) == 12
    assert bulk.rows == 200 - 12


def test_ts_ms_beyond_64_bits_in_microseconds_is_a_dead_letter() -> None:
    """ts_ms * 1000 beyond int64 used to crash `to_arrow` on the per-event path."""
    good = _event(0)
    values: list[bytes | str] = [
        json.dumps({**good, "source": {"lsn": 1, "ts_ms": 2**60}}).encode(),
        json.dumps({**good, "source": {**good["source"], "lsn": 2**70}}).encode(),
        orjson.dumps(good),
    ]
    one, bulk = _both(values)
    _assert_same(one, bulk)
    reasons = [d.reason for d in sorted(bulk.dead_letters, key=lambda d: d.position)]
    assert "source.ts_ms is out of the 64-bit range" in reasons[0]
    assert "source.lsn must be an integer" in reasons[1]  # orjson reads 2**70 as a float
    assert len(reasons) == 2 and bulk.to_arrow("k").num_rows == 1


@pytest.mark.parametrize("connector", [b'"postgres\xa9ql"', b"1e999", b"-2E+400", b"1" * 400])
def test_what_msgspec_skips_unread_is_judged_as_the_per_event_path_does(connector: bytes) -> None:
    """Found by comparing the paths: invalid UTF-8 or a number beyond a double in a field nobody reads gave a
    row in bulk (msgspec does not check what it skips) but a dead letter per event (orjson)."""
    raw = orjson.dumps(_event(0))
    bad = raw.replace(b'"connector":"postgresql"', b'"connector":' + connector)
    assert bad != raw
    one, bulk = _both([raw, bad, raw])
    _assert_same(one, bulk)
    assert [d.position.offset for d in bulk.dead_letters] == [101]
    assert "malformed JSON" in bulk.dead_letters[0].reason


@pytest.mark.parametrize("text", ["0.0E-2000000001", "1e5", "NaN", "Infinity", "1.2.3", "+", ""])
def test_numeric_text_that_is_not_a_plain_decimal_is_a_dead_letter(text: str) -> None:
    """pyarrow's decimal cast kills the process on "0.0E-2000000001" (found by fuzzing the paths): numerics
    must be plain decimals before they are cast, on the Debezium paths and the pgoutput text path alike."""
    good = _event(0)
    bad = {**good, "after": {**good["after"], "m38": text}}
    one, bulk = _both([orjson.dumps(good), orjson.dumps(bad), orjson.dumps(good)])
    _assert_same(one, bulk)
    assert [d.position.offset for d in bulk.dead_letters] == [101]
    assert "plain decimal" in bulk.dead_letters[0].reason or text in ("", "+")
    fast = _text_batch([ROWS[0], [b"2", *ROWS[0][1:4], text.encode(), *ROWS[0][5:]]], ["c", "c"])
    table = fast.to_arrow("k")
    assert table.num_rows == 1 and len(fast.dead_letters) == 1
    assert fast.dead_letters[0].reason.startswith("column 'm38'")


def test_a_wrapped_value_with_invalid_utf8_where_nobody_reads_is_a_dead_letter_too() -> None:
    wrapped = b'{"schema":{"name":"bad \xff"},"payload":' + orjson.dumps(_event(0)) + b"}"
    one, bulk = _both([orjson.dumps(_event(1)), wrapped])
    _assert_same(one, bulk)
    assert [d.position.offset for d in bulk.dead_letters] == [101]
