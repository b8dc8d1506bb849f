"""Per-table batches: exact conversions, dead letters that do not sink the batch, both input paths agree."""

from __future__ import annotations

import time
from datetime import date, datetime, timezone
from datetime import time as dtime
from decimal import Decimal

import pyarrow as pa
import pytest

from bankflow.engines.builtin.events import iso_utc, text_to_debezium, to_debezium_event
from bankflow.lake.arrow_schema import arrow_type, table_arrow_schema
from bankflow.lake.batch import TableBatch
from bankflow.lake.positions import KafkaPosition, LsnPosition
from bankflow.spec.models import Column, Flush, Table
from bankflow.spec.types import parse_pg_type
from tests.fixtures.lake_types import ALL_TYPES, COMMIT_TS, ROWS
from tests.fixtures.lake_types import text_batch as _text_batch

UTC = timezone.utc

def test_arrow_schema_is_exact_and_ends_with_cdc_columns() -> None:
    schema = table_arrow_schema(ALL_TYPES)
    assert schema.field("m").type == pa.decimal128(18, 2)
    assert schema.field("m38").type == pa.decimal128(38, 10)
    assert schema.field("tstz").type == pa.timestamp("us", tz="UTC")
    assert schema.field("ts").type == pa.timestamp("us")
    assert schema.field("tm").type == pa.time64("us")
    assert schema.field("raw").type == pa.binary()
    assert not schema.field("id").nullable and schema.field("i").nullable
    assert schema.names[-5:] == ["_op", "_lsn", "_tx_id", "_source_ts", "_file"]
    assert arrow_type(parse_pg_type("double precision")) == pa.float64()
    # key-only deletes: non-key NOT NULL columns must still admit the delete row
    default = Table(name="t", primary_key=["id"], replica_identity="default",
                    columns=[Column(name="id", type="bigint", nullable=False),
                             Column(name="x", type="text", nullable=False)])
    assert table_arrow_schema(default).field("x").nullable


def test_text_fast_path_converts_every_type_exactly() -> None:
    table = _text_batch(ROWS).to_arrow("some/key.parquet")
    assert table.schema == table_arrow_schema(ALL_TYPES)
    one, two, three = table.to_pylist()
    assert one["m"] == Decimal("9999999999999999.99")
    assert one["m38"] == Decimal("1234567890123456789012345678.0123456789")
    assert two["m"] == Decimal("0.30") and two["m38"] == Decimal("1E-10")
    assert one["tstz"] == datetime(2024, 1, 1, 12, 34, 56, 654321, tzinfo=UTC)
    assert one["ts"] == datetime(2024, 1, 1, 12, 34, 56, 123456)
    assert two["ts"] == datetime(1969, 12, 31, 23, 59, 59, 500000)
    assert one["d"] == date(2024, 2, 29) and one["tm"] == dtime(23, 59, 59, 999999)
    assert one["b"] is True and two["b"] is False
    assert one["raw"] == b"\x00\xff\x10" and two["raw"] == b""
    assert one["c"] == "ab " and two["v"] == "ünïcødé" and two["t"] == ""
    assert all(v is None for k, v in three.items() if k not in ("id", "_op", "_lsn", "_tx_id", "_source_ts", "_file"))
    assert {r["_tx_id"] for r in (one, two, three)} == {77}
    assert one["_source_ts"] == datetime.fromtimestamp(COMMIT_TS / 1e6, tz=UTC)
    assert [r["_lsn"] for r in (one, two, three)] == [900, 901, 902]
    assert {r["_file"] for r in (one, two, three)} == {"some/key.parquet"}


def test_debezium_events_and_text_fast_path_give_identical_tables() -> None:
    fast = _text_batch(ROWS, ["c", "u", "d"]).to_arrow("k")
    batch = TableBatch(ALL_TYPES)
    for n, (row, op) in enumerate(zip(ROWS, ["c", "u", "d"], strict=True)):
        event = to_debezium_event(ALL_TYPES, op, before=row if op == "d" else None,
                                  after=None if op == "d" else row, lsn=900 + n, xid=77, commit_ts_us=COMMIT_TS,
                                  topic_prefix="bank", database="db", schema="public")
        assert batch.append_debezium(event, LsnPosition(1000, 900 + n))
    assert not batch.dead_letters
    assert batch.to_arrow("k").equals(fast)


def test_debezium_value_shapes() -> None:
    pg = parse_pg_type
    assert text_to_debezium(pg("numeric(18,2)"), b"0.10") == "0.10"
    assert text_to_debezium(pg("timestamptz"), b"2024-01-01 12:34:56.120000+00") == "2024-01-01T12:34:56.12Z"
    assert text_to_debezium(pg("timestamptz"), b"2024-01-01 12:34:56+00") == "2024-01-01T12:34:56Z"
    assert text_to_debezium(pg("timestamp"), b"1970-01-02 00:00:00.000001") == 86_400_000_001
    assert text_to_debezium(pg("date"), b"1970-01-11") == 10
    assert text_to_debezium(pg("time"), b"00:00:01.5") == 1_500_000
    assert text_to_debezium(pg("bytea"), b"\\x0102") == "AQI="
    assert text_to_debezium(pg("boolean"), b"t") is True
    assert text_to_debezium(pg("date"), b"infinity") == "infinity"  # passed through → dead letter later
    assert iso_utc(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00Z"
    event = to_debezium_event(ALL_TYPES, "c", before=None, after=ROWS[2], lsn=5, xid=9, commit_ts_us=2_000_123,
                              topic_prefix="bank", database="db", schema="public", now_us=3_000_000)
    assert event["source"]["ts_ms"] == 2000 and event["source"]["ts_us"] == 2_000_123
    assert event["source"]["ts_ns"] == 2_000_123_000 and event["ts_ms"] == 3000
    assert event["source"]["connector"] == "postgresql" and event["source"]["name"] == "bank"
    assert list(event) == ["before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns"]


def test_bad_values_go_to_dead_letters_and_the_batch_goes_on() -> None:
    rows = [list(ROWS[2]) for _ in range(4)]
    rows[0][0] = b"10"
    rows[1][0] = b"not a number"
    rows[2][0] = b"12"
    rows[2][3] = b"12345678901234567.00"  # 17 integer digits in numeric(18,2)
    rows[3][0] = b"13"
    rows[3][3] = b"1.234"  # more scale than declared: never rounded silently
    batch = _text_batch(rows)
    table = batch.to_arrow("k")
    assert table["id"].to_pylist() == [10]
    reasons = {d.position: d.reason for d in batch.dead_letters}
    assert set(reasons) == {LsnPosition(1000, 901), LsnPosition(1000, 902), LsnPosition(1000, 903)}
    assert "'id'" in reasons[LsnPosition(1000, 901)] and "not a number" in reasons[LsnPosition(1000, 901)]
    assert "precision" in reasons[LsnPosition(1000, 902)]
    assert "data loss" in reasons[LsnPosition(1000, 903)]
    assert batch.dead_letters[0].event["after"]["id"] == "not a number"


def test_debezium_path_dead_letters_unknown_columns_and_wrong_types() -> None:
    batch = TableBatch(ALL_TYPES)
    good = {"op": "c", "after": {"id": 1, "m": "1.50"}, "source": {"lsn": 10, "txId": 3, "ts_us": 5}}
    assert batch.append_debezium(good, KafkaPosition(0, 1))
    assert not batch.append_debezium({**good, "after": {"id": 2, "nope": 1}}, KafkaPosition(0, 2))
    assert not batch.append_debezium({**good, "op": "x"}, KafkaPosition(0, 3))
    assert not batch.append_debezium({"op": "d", "before": None, "after": None, "source": {"lsn": 1}},
                                     KafkaPosition(0, 4))
    assert batch.append_debezium({**good, "after": {"id": "3"}}, KafkaPosition(0, 5))  # fails at conversion
    assert batch.append_debezium({**good, "after": {"id": 4, "m": "12.345"}}, KafkaPosition(0, 6))
    assert batch.append_debezium({**good, "after": {"id": None}}, KafkaPosition(0, 7))  # NOT NULL key
    table = batch.to_arrow("k")
    assert table["id"].to_pylist() == [1] and table["m"].to_pylist() == [Decimal("1.50")]
    assert sorted(d.position.offset for d in batch.dead_letters) == [2, 3, 4, 5, 6, 7]
    assert batch.first_position == KafkaPosition(0, 1) and batch.last_position == KafkaPosition(0, 7)
    assert batch.events == 7


def test_positions_cover_dead_lettered_events_and_flush_policy() -> None:
    batch = TableBatch(ALL_TYPES)
    assert batch.empty and not batch.should_flush(Flush())
    batch.dead_letter(LsnPosition(5, 1), "bad", {"x": 1})
    batch.append_text_row("c", ROWS[2], LsnPosition(5, 2), 1, COMMIT_TS)
    batch.dead_letter(LsnPosition(6, 3), "bad", {"x": 2})
    assert batch.first_position == LsnPosition(5, 1) and batch.last_position == LsnPosition(6, 3)
    assert batch.rows == 1 and batch.events == 3
    assert batch.should_flush(Flush(max_rows=1))
    assert not batch.should_flush(Flush(max_rows=10, max_seconds=60))
    assert batch.should_flush(Flush(max_rows=10, max_bytes=1024, max_seconds=60)) is (batch.approx_bytes >= 1024)
    time.sleep(0.02)
    assert batch.should_flush(Flush(max_rows=10, max_seconds=0.01))
    batch.clear()
    assert batch.empty and batch.rows == 0 and batch.first_position is None


def test_mode_switch_keeps_both_parts() -> None:
    batch = _text_batch(ROWS[:1])
    event = to_debezium_event(ALL_TYPES, "c", before=None, after=ROWS[1], lsn=950, xid=78, commit_ts_us=COMMIT_TS,
                              topic_prefix="p", database="d", schema="s")
    batch.append_debezium(event, LsnPosition(1001, 950))
    table = batch.to_arrow("k")
    assert table["id"].to_pylist() == [1, 2] and table["_tx_id"].to_pylist() == [77, 78]
    assert batch.last_position == LsnPosition(1001, 950)


@pytest.mark.parametrize("value", [b"NaN", b"infinity", b"1.2.3"])
def test_numeric_specials_are_dead_letters_not_floats(value: bytes) -> None:
    row = list(ROWS[2])
    row[3] = value
    batch = _text_batch([row])
    assert batch.to_arrow("k").num_rows == 0 and len(batch.dead_letters) == 1


def _two_columns() -> TableBatch:
    return TableBatch(Table(name="t", primary_key=["id"], columns=[Column(name="id", type="bigint", nullable=False),
                                                                    Column(name="m", type="numeric(10,2)")]))


def test_rows_sharing_a_change_lsn_get_consecutive_positions_from_their_runs_first_index() -> None:
    """The fast path: a run stores its first index once; every row's position derives from it (no per-row cost)."""
    batch = _two_columns()
    cols, ops, lsns = batch.text_sink()
    batch.begin_text_tx(9000, 5, COMMIT_TS, 800, first_index=3)  # a transaction already 3 events in (last batch)
    for i, m in enumerate([b"1.00", b"oops", b"3.00", b"4.00"]):
        cols[0].append(str(i).encode())
        cols[1].append(m)
        ops.append("c")
        lsns.append(800)  # one multi-insert WAL record
    assert batch.first_position == LsnPosition(9000, 800, 3) and batch.last_position == LsnPosition(9000, 800, 6)
    # a gap in the indexes (an event of the transaction that is not a row here) starts a new run
    batch.append_text_row("c", [b"9", b"9.00"], LsnPosition(9000, 800, 9), 5, COMMIT_TS)
    batch.append_text_row("c", [b"10", b"10.00"], LsnPosition(9000, 810, 10), 5, COMMIT_TS)
    assert batch.last_position == LsnPosition(9000, 810, 10)
    table = batch.to_arrow("k")
    assert table["id"].to_pylist() == [0, 2, 3, 9, 10] and set(table["_lsn"].to_pylist()) == {800, 810}
    assert [d.position for d in batch.dead_letters] == [LsnPosition(9000, 800, 4)]  # the bad value's own position


def test_snapshot_runs_have_row_numbers_as_lsns_and_seq_zero() -> None:
    batch = _two_columns()
    for row_no in (0, 2):  # two pieces of a snapshot, one run each
        cols, ops, lsns = batch.text_sink()
        batch.begin_text_tx(7000, 1, COMMIT_TS, row_no, lsn_override=6999)
        for i in range(row_no, row_no + 2):
            cols[0].append(str(i).encode())
            cols[1].append(b"1.00")
            ops.append("r")
            lsns.append(i)
    assert batch.first_position == LsnPosition(7000, 0, 0) and batch.last_position == LsnPosition(7000, 3, 0)
    assert batch.to_arrow("k")["_lsn"].to_pylist() == [6999] * 4


def test_lsn_positions_with_seq_format_fixed_width_sort_and_parse_back() -> None:
    from bankflow.lake.positions import (
        format_span,
        lsn_position_of_json,
        parse_file_name,
        parse_span,
        position_json,
    )

    a, b = LsnPosition(0x20, 0x10, 9), LsnPosition(0x20, 0x10, 10)
    span = format_span(a, b)
    assert span == "0000000000000020.0000000000000010.00000009-0000000000000020.0000000000000010.0000000A"
    assert parse_span(span) == (a, b) and format_span(a, a) < format_span(b, b)
    assert parse_file_name(f"my-table-{span}.parquet") == ("my-table", a, b)
    assert parse_file_name(f"my-table-snapshot-{span}.jsonl") == ("my-table-snapshot", a, b)
    assert lsn_position_of_json(position_json(b)) == b
    assert lsn_position_of_json({"commit_lsn_int": 32, "lsn_int": 16}) == LsnPosition(32, 16, 0)  # older record
    with pytest.raises(ValueError, match="index in its transaction"):
        format_span(LsnPosition(1, 1, -1), b)
