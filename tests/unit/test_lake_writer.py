"""Lake file keys, atomic writes, dead-letter files and the replay plan that makes retries exactly-once."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from bankflow.lake.batch import TableBatch
from bankflow.lake.deadletter import DeadLetterStore
from bankflow.lake.positions import KafkaPosition, LsnPosition, format_span, parse_file_name, parse_span
from bankflow.lake.replay import ReplayPlan
from bankflow.lake.writer import LakeFile, LakeWriter
from bankflow.spec.models import Column, Flush, Lake, Table

TABLE = Table(name="accounts", primary_key=["id"], columns=[
    Column(name="id", type="bigint", nullable=False), Column(name="balance", type="numeric(18,2)")])
TS_2024_03_05 = 1_709_640_000_000_000  # 2024-03-05T12:00:00Z


def _writer(tmp_path: Path, layout: str = "{table}/date={date}") -> LakeWriter:
    return LakeWriter(LocalFileSystem(auto_mkdir=True), str(tmp_path), Lake(url=f"file://{tmp_path}", layout=layout))


def _event(i: int, ts: int = TS_2024_03_05) -> dict:
    return {"op": "c", "after": {"id": i, "balance": f"{i}.00"}, "source": {"lsn": 100 + i, "txId": 1, "ts_us": ts}}


def test_spans_are_fixed_width_sortable_and_parse_back() -> None:
    a = format_span(LsnPosition(0x16B3A28, 0x16B3A00), LsnPosition(0x16B3A28, 0x16B3A10))
    b = format_span(LsnPosition(0x1000000000, 1), LsnPosition(0x1000000000, 2))
    assert a == "00000000016B3A28.00000000016B3A00.00000000-00000000016B3A28.00000000016B3A10.00000000"
    assert a < b and len(a) == len(b)
    assert parse_span(a) == (LsnPosition(0x16B3A28, 0x16B3A00), LsnPosition(0x16B3A28, 0x16B3A10))
    # keys written before positions carried `seq` parse with seq 0
    assert parse_span("00000000016B3A28.00000000016B3A00-00000000016B3A28.00000000016B3A10") == parse_span(a)
    k = format_span(KafkaPosition(3, 9), KafkaPosition(3, 10))
    assert k == "p00003-00000000000000000009-00000000000000000010"
    assert parse_file_name(f"bank.public.accounts-{k}.parquet") == ("bank.public.accounts", KafkaPosition(3, 9),
                                                                     KafkaPosition(3, 10))
    assert parse_file_name(".accounts-x.parquet.tmp") is None


def test_key_layout_date_comes_from_commit_time_and_write_is_atomic(tmp_path: Path) -> None:
    writer = _writer(tmp_path, "{schema}/{topic}/{table}/p={partition}/date={date}")
    batch = TableBatch(TABLE, stream="bank.public.accounts", schema="public", topic="bank.public.accounts")
    for i in range(3):
        batch.append_debezium(_event(i), KafkaPosition(2, 40 + i))
    written = writer.write_batch(batch)
    expected = (f"{tmp_path}/public/bank.public.accounts/accounts/p=2/date=2024-03-05/"
                "bank.public.accounts-p00002-00000000000000000040-00000000000000000042.parquet")
    assert written.key == expected and written.rows == 3 and written.dead_letters == 0
    assert batch.empty
    table = pq.read_table(expected)
    assert table["_file"].to_pylist() == [expected] * 3
    assert [p.name for p in Path(expected).parent.iterdir()] == [Path(expected).name]  # no temp files left
    files = writer.list_files(stream="bank.public.accounts", table="accounts", topic="bank.public.accounts")
    assert files == [LakeFile(expected, "bank.public.accounts", KafkaPosition(2, 40), KafkaPosition(2, 42))]


def test_dead_letters_are_written_next_to_the_batch_and_idempotently(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    for _attempt in range(2):  # a retry rewrites the same dead-letter file
        batch = TableBatch(TABLE)
        batch.append_debezium(_event(1), LsnPosition(7, 1))
        batch.append_debezium({**_event(2), "after": {"id": "two"}}, LsnPosition(7, 2))
        written = writer.write_batch(batch)
        assert written.rows == 1 and written.dead_letters == 1
    records = DeadLetterStore(writer.fs, str(tmp_path)).read_all()
    assert len(records) == 1
    assert records[0]["table"] == "accounts" and records[0]["position"]["lsn_int"] == 2
    assert "two" in records[0]["reason"] and records[0]["event"]["after"] == {"id": "two"}


def test_a_batch_of_only_dead_letters_writes_no_parquet(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    batch = TableBatch(TABLE)
    batch.append_debezium({**_event(1), "after": {"zzz": 1}}, LsnPosition(7, 1))
    written = writer.write_batch(batch)
    assert written.key is None and written.dead_letters == 1
    assert not list(tmp_path.rglob("*.parquet"))


def test_replay_plan_classifies_orphans() -> None:
    def f(a: int, b: int) -> LakeFile:
        return LakeFile(f"k{a}", "s", LsnPosition(a, a), LsnPosition(b, b))

    acked = 30  # every transaction with commit LSN < 30 is acknowledged
    plan = ReplayPlan.from_files([f(10, 20), f(25, 35), f(40, 50), f(51, 60)], lambda p: p.commit < acked)
    assert [c.key for c in plan.cuts] == ["k40", "k51"] and plan.skip_until == LsnPosition(35, 35)
    assert plan.skip(LsnPosition(31, 31)) and plan.skip(LsnPosition(35, 35))
    assert not plan.skip(LsnPosition(40, 40)) and plan.skip_until is None
    assert plan.cut_due(LsnPosition(45, 45)) is None
    assert plan.cut_due(LsnPosition(50, 50)).key == "k40"
    assert plan.cut_due(LsnPosition(60, 60)).key == "k51" and not plan.active


def test_replay_with_another_flush_policy_reproduces_identical_files(tmp_path: Path) -> None:
    """Crash after writing, before acking: the retry must rewrite the same keys with the same rows."""
    events = [(LsnPosition(100 + i // 4 * 10, 1000 + i), _event(i, TS_2024_03_05 + i)) for i in range(30)]

    def run(flush: Flush, plan: ReplayPlan | None) -> dict[str, bytes]:
        writer = _writer(tmp_path)
        batch = TableBatch(TABLE)
        for position, event in events:
            if plan is not None and plan.skip(position):
                continue
            batch.append_debezium(event, position)
            if plan is not None and plan.active:
                if plan.cut_due(position):
                    writer.write_batch(batch)
            elif batch.should_flush(flush):
                writer.write_batch(batch)
        if not batch.empty:
            writer.write_batch(batch)
        return {str(p): p.read_bytes() for p in tmp_path.rglob("*.parquet")}

    first = run(Flush(max_rows=7), None)
    writer = _writer(tmp_path)
    files = writer.list_files(stream="accounts", table="accounts")
    assert len(files) == 5
    plan = ReplayPlan.from_files(files, lambda p: False)  # nothing was acknowledged
    second = run(Flush(max_rows=1000), plan)
    assert second.keys() == first.keys()
    for key in first:
        assert pq.read_table(key).equals(pq.read_table(key)) and second[key] == first[key]


def test_list_batches_includes_dead_letter_only_batches_so_a_replay_reproduces_their_keys(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    mixed = TableBatch(TABLE)
    mixed.append_debezium(_event(1), LsnPosition(7, 1))
    mixed.append_debezium({**_event(2), "after": {"id": "two"}}, LsnPosition(7, 2))
    writer.write_batch(mixed)

    def dead_only() -> TableBatch:
        batch = TableBatch(TABLE)
        batch.append_debezium({**_event(3), "after": {"zzz": 1}}, LsnPosition(9, 3))
        batch.append_debezium({**_event(4), "after": {"zzz": 2}}, LsnPosition(9, 4))
        return batch

    writer.write_batch(dead_only())
    batches = writer.list_batches(stream="accounts", table="accounts")
    assert [(b.first, b.last) for b in batches] == [(LsnPosition(7, 1), LsnPosition(7, 2)),
                                                    (LsnPosition(9, 3), LsnPosition(9, 4))]
    assert batches[0].key.endswith(".parquet") and batches[1].key.endswith(".jsonl")

    # the slot acknowledged nothing after commit 8: the dead-letter-only batch is an orphan to reproduce
    plan = ReplayPlan.from_files(batches, lambda p: p.commit < 8)
    assert [c.key for c in plan.cuts] == [batches[1].key]
    replayed = dead_only()
    assert plan.cut_due(replayed.last_position) is not None
    writer.write_batch(replayed)
    assert len(list(tmp_path.rglob("*.jsonl"))) == 2  # the same key again, not a second copy
    assert len(DeadLetterStore(writer.fs, str(tmp_path)).read_all()) == 3


def test_parquet_dictionary_encodes_text_columns_only(tmp_path: Path) -> None:
    """Numbers, decimals and timestamps of a change log are mostly distinct: dictionary pages only cost there."""
    writer = _writer(tmp_path)
    batch = TableBatch(TABLE)
    for i in range(1, 200):
        batch.append_debezium(_event(i), LsnPosition(7, i))
    written = writer.write_batch(batch)
    meta = pq.ParquetFile(str(written.key)).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: set(meta.column(i).encodings) for i in range(meta.num_columns)}
    dictionary = {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}
    assert encodings["_op"] & dictionary and encodings["_file"] & dictionary
    for column in ("id", "balance", "_lsn", "_source_ts"):
        assert not encodings[column] & dictionary, (column, encodings[column])
