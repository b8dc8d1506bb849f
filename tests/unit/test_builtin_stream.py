"""The built-in engine's stream loop on hand-built pgoutput messages: no server, the writer runs in-process.

What it holds: inserts take the fast path in runs (and the slow path when a value kind is unusual or the
relation's columns differ from the spec), batches are cut by max_rows, a catch-up run ends at the target
commit, and nothing is acknowledged before the files holding its events are written.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bankflow.engines.builtin import stream as stream_mod
from bankflow.engines.builtin.stream import StreamReader
from bankflow.lake.replay import ReplayPlan
from bankflow.source.schema_changes import SourceType
from bankflow.spec.loader import load_spec
from tests.fixtures.pgoutput_messages import tuple_data

SPEC = """\
version: 1
name: stream
state_dir: state
source: {database: db, schema: s}
tables:
  - name: t
    primary_key: [id]
    columns:
      - {name: id, type: bigint, nullable: false}
      - {name: note, type: text}
cdc: {slot: sl, publication: pub, snapshot_mode: never}
lake:
  url: file://lake
  flush: {max_rows: 4, max_seconds: 600}
warehouse: {type: duckdb, path: wh.duckdb}
"""


TYPE_OIDS = {"id": 20, "amount": 1700}  # bigint, numeric; every other column is text (25)
TYPE_NAMES = {20: "bigint", 23: "integer", 25: "text", 1700: "numeric"}


def relation(*columns: str, typmods: dict[str, int] | None = None) -> bytes:
    typmods = typmods or {}
    return (b"R" + struct.pack(">I", 1) + b"s\0t\0f" + struct.pack(">h", len(columns))
            + b"".join(b"\x01" + c.encode() + b"\0" + struct.pack(">Ii", TYPE_OIDS.get(c, 25), typmods.get(c, -1))
                       for c in columns))


class Catalog:
    """The source catalog as the stream asks it (types of a relation's columns, live columns), no server."""

    def __init__(self) -> None:
        self.live: dict[str, str] = {"id": "bigint", "note": "text"}

    def source_type(self, oid: int, typmod: int) -> SourceType:
        name = TYPE_NAMES[oid]
        if oid == 1700 and typmod > 0:
            precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
            name = f"numeric({precision},{scale})"
        return SourceType(name)

    def live_columns(self, schema: str, table: str) -> dict[str, SourceType]:
        return {name: SourceType(text) for name, text in self.live.items()}

    def close(self) -> None:
        pass


def begin(commit: int, xid: int) -> bytes:
    return b"B" + struct.pack(">QqI", commit, 1_000_000, xid)


def commit(commit: int) -> bytes:
    return b"C" + struct.pack(">BQQq", 0, commit, commit + 8, 1_000_000)


def insert(*values: bytes | str | None) -> bytes:
    return b"I" + struct.pack(">I", 1) + b"N" + tuple_data(*values)


class Message:
    def __init__(self, payload: bytes, data_start: int) -> None:
        self.payload = payload
        self.data_start = data_start


class Cursor:
    """Replays the messages, then reports the server idle; records acknowledgements."""

    def __init__(self, messages: list[Message]) -> None:
        self._messages: Iterator[Message] = iter(messages)
        self.wal_end = 0
        self.acks: list[int] = []

    def read_message(self) -> Message | None:
        return next(self._messages, None)

    def send_feedback(self, *, flush_lsn: int = 0, **_: Any) -> None:
        if flush_lsn:
            self.acks.append(flush_lsn)


class InlinePool:
    """The writer thread, run inline: a file is durable when `submit` returns."""

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self.acks_at_write: list[list[int]] = []  # the acknowledgements sent before each file was written

    def submit(self, fn: Any, batch: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.acks_at_write.append(list(self.cursor.acks))
        future.set_result(fn(batch))
        return future


@pytest.fixture
def reader(tmp_path: Path) -> StreamReader:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    resolved = load_spec(path, environ={})
    reader = StreamReader(resolved, {})
    reader.shapes.catalog = Catalog()  # type: ignore[assignment]
    table = resolved.spec.tables[0]
    reader._states[table.name] = stream_mod._TableState(
        table, stream_mod.new_batch(resolved, table, table.name), ReplayPlan())
    return reader


def run(reader: StreamReader, payloads: list[bytes], target: int) -> Cursor:
    cursor = Cursor([Message(p, 1000 + i) for i, p in enumerate(payloads)])
    reader._cursor = cursor
    reader._pool = InlinePool(cursor)
    reader._follow, reader._target = False, target
    reader._wait_confirmed = lambda lsn, timeout=5.0: None  # type: ignore[method-assign]  # no server here
    reader._loop(None, cursor, None)
    reader._finish()
    return cursor


def lake(tmp_path: Path) -> pa.Table:
    files = sorted((tmp_path / "lake").rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def test_runs_of_inserts_are_cut_at_max_rows_and_acked_after_their_files(reader: StreamReader,
                                                                           tmp_path: Path) -> None:
    payloads = [relation("id", "note"), begin(5000, 7)]
    payloads += [insert(str(i).encode(), None if i % 2 else b"x") for i in range(10)]
    payloads += [commit(5000), begin(6000, 8), insert(b"10", b"late"), commit(6000)]
    cursor = run(reader, payloads, target=6000)
    assert reader.result.events == 11 and len(reader.result.files) == 3  # 4 + 4 + 3 rows
    rows = lake(tmp_path).to_pylist()
    assert [r["id"] for r in rows] == list(range(11))
    assert [r["note"] for r in rows[:3]] == ["x", None, "x"] and rows[10]["note"] == "late"
    assert {r["_tx_id"] for r in rows} == {7, 8}
    # the last file holds rows of both transactions: nothing is acknowledged before it is written
    assert reader._pool.acks_at_write == [[], [], []]
    assert cursor.acks == [6008]  # then the end of the last commit


def test_an_unusual_value_takes_the_slow_path_without_a_partial_row(reader: StreamReader, tmp_path: Path) -> None:
    payloads = [relation("id", "note"), begin(5000, 7), insert(b"1", b"a"), insert(b"2", "u"), insert(b"3", b"c"),
                commit(5000)]
    run(reader, payloads, target=5000)
    # an insert never carries an unchanged TOAST value; if one did, it is a dead letter, never a NULL
    assert reader.result.events == 3 and reader.result.dead_letters == 1
    rows = lake(tmp_path).to_pylist()
    assert [(r["id"], r["note"]) for r in rows] == [(1, "a"), (3, "c")]


def test_a_relation_whose_columns_differ_from_the_spec_maps_them_by_name(reader: StreamReader,
                                                                        tmp_path: Path) -> None:
    payloads = [relation("note", "id"), begin(5000, 7), insert(b"a", b"1"), insert(None, b"2"), commit(5000)]
    run(reader, payloads, target=5000)
    rows = lake(tmp_path).to_pylist()
    assert [(r["id"], r["note"]) for r in rows] == [(1, "a"), (2, None)]


def update(old_kind: bytes, old: tuple[bytes | None, ...], new: tuple[bytes | None, ...]) -> bytes:
    return b"U" + struct.pack(">I", 1) + old_kind + tuple_data(*old) + b"N" + tuple_data(*new)


@pytest.mark.parametrize("old_kind", [b"O", b"K"])
def test_an_update_of_the_primary_key_is_a_delete_of_the_old_key_and_a_create_of_the_new(
        reader: StreamReader, tmp_path: Path, old_kind: bytes) -> None:
    old = (b"1", b"a") if old_kind == b"O" else (b"1", None)  # 'K': the old key only
    payloads = [begin(5000, 7), relation("id", "note"), update(old_kind, old, (b"101", b"a")),
                update(b"O", (b"2", b"b"), (b"2", b"c")), commit(5000)]
    run(reader, payloads, target=5000)
    rows = [(r["id"], r["_op"], r["note"], r["_lsn"]) for r in lake(tmp_path).to_pylist()]
    assert rows[:2] == [(1, "d", old[1].decode() if old[1] else None, 1002), (101, "c", "a", 1002)]
    assert rows[2][:3] == (2, "u", "c")  # a key that stays is an update
    assert reader.result.events == 3


def test_freeze_stops_at_a_relation_with_a_new_column_and_acknowledges_nothing_of_its_transaction(
        reader: StreamReader, tmp_path: Path) -> None:
    reader.shapes.catalog.live["colour"] = "text"  # type: ignore[attr-defined]
    payloads = [begin(5000, 7), relation("id", "note"), insert(b"1", b"a"), commit(5000),
                begin(6000, 8), relation("id", "note", "colour"), insert(b"2", b"b", b"red"), commit(6000)]
    cursor = run(reader, payloads, target=6000)
    assert reader._stopped is not None
    assert "column 'colour' added (text)" in reader._stopped and "schema_changes: freeze" in reader._stopped
    assert [r["id"] for r in lake(tmp_path).to_pylist()] == [1]
    assert cursor.acks == [5008]  # the first transaction only
    assert not reader.history.records("t")


def test_evolve_records_the_new_shape_and_writes_files_in_it(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("primary_key: [id]", "primary_key: [id]\n    schema_changes: evolve"))
    resolved = load_spec(path, environ={})
    reader = StreamReader(resolved, {})
    reader.shapes.catalog = Catalog()  # type: ignore[assignment]
    reader.shapes.catalog.live.update(amount="numeric(12,2)")  # type: ignore[attr-defined]
    table = resolved.spec.tables[0]
    reader._states[table.name] = stream_mod._TableState(table, stream_mod.new_batch(resolved, table, "t"),
                                                        ReplayPlan())
    typmod = ((12 << 16) | 2) + 4
    payloads = [begin(5000, 7), relation("id", "note"), insert(b"1", b"a"), commit(5000),
                begin(6000, 8), relation("id", "note", "amount", typmods={"amount": typmod}),
                insert(b"2", b"b", b"12.34"), commit(6000)]
    run(reader, payloads, target=6000)
    assert reader._stopped is None
    records = reader.history.records("t")
    assert [(c.kind, c.column, c.new_type) for r in records for c in r.changes] == [
        ("added", "amount", "numeric(12,2)")]
    files = sorted((tmp_path / "lake").rglob("*.parquet"))
    assert [pq.read_schema(f).names[:3] for f in files] == [["id", "note", "_op"], ["id", "note", "amount"]]
    assert str(pq.read_table(files[1]).column("amount")[0]) == "12.34"


# ---- positions name one event each; a replay after a crash reproduces the lake exactly (or stops)

def make_reader(tmp_path: Path, confirmed: int | None = None) -> StreamReader:
    """A reader on the spec in `tmp_path` (lake shared between readers); with `confirmed`, the table's replay plan
    is the one a restart at that confirmed flush LSN makes from the lake."""
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    resolved = load_spec(path, environ={})
    reader = StreamReader(resolved, {})
    reader.shapes.catalog = Catalog()  # type: ignore[assignment]
    table = resolved.spec.tables[0]
    if confirmed is None:
        state = stream_mod._TableState(table, stream_mod.new_batch(resolved, table, table.name), ReplayPlan())
    else:
        state = reader._table_state(table, confirmed)
    reader._states[table.name] = state
    return reader


def run_at(reader: StreamReader, messages: list[tuple[bytes, int]], target: int) -> Cursor:
    """Like `run`, with each message's own change LSN (rows of a multi-insert share one)."""
    cursor = Cursor([Message(p, lsn) for p, lsn in messages])
    reader._cursor = cursor
    reader._pool = InlinePool(cursor)
    reader._follow, reader._target = False, target
    reader._wait_confirmed = lambda lsn, timeout=5.0: None  # type: ignore[method-assign]
    reader._loop(None, cursor, None)
    reader._finish()
    return cursor


def tx(commit_lsn: int, xid: int, changes: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    return [(begin(commit_lsn, xid), commit_lsn - 100), *changes, (commit(commit_lsn), commit_lsn)]


def workload() -> list[list[tuple[bytes, int]]]:
    """Three transactions: a multi-insert (6 rows at one LSN); a COPY-like run at one LSN with a dead letter in
    it, a key change and an update; 3 more rows at one LSN. With max_rows 4 every file but one ends mid-LSN."""
    a = tx(5000, 7, [(relation("id", "note"), 0)] + [(insert(str(i).encode(), b"a"), 4000) for i in range(6)])
    b = tx(6000, 8, [(insert(str(i).encode(), b"b"), 5100) for i in range(10, 15)]
           + [(insert(b"15", "u"), 5100)]  # an unchanged TOAST marker in an insert: a dead letter
           + [(insert(str(i).encode(), b"b"), 5100) for i in range(16, 19)]
           + [(update(b"K", (b"10", None), (b"110", b"b")), 5200), (update(b"O", (b"11", b"b"), (b"11", b"B")), 5300)])
    c = tx(7000, 9, [(insert(str(i).encode(), b"c"), 6100) for i in range(20, 23)])
    return [a, b, c]


def lake_files(tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    return {f.name: pq.read_table(f).to_pylist() for f in sorted((tmp_path / "lake").rglob("*.parquet"))}


def test_rows_that_share_a_change_lsn_have_positions_of_their_own(tmp_path: Path) -> None:
    from bankflow.lake.positions import LsnPosition, parse_file_name

    reader = make_reader(tmp_path)
    run_at(reader, [m for t in workload() for m in t], target=7000)
    spans = [parse_file_name(name)[1:] for name in lake_files(tmp_path)]  # type: ignore[index]
    assert spans[:3] == [(LsnPosition(5000, 4000, 0), LsnPosition(5000, 4000, 3)),
                         (LsnPosition(5000, 4000, 4), LsnPosition(6000, 5100, 1)),
                         (LsnPosition(6000, 5100, 2), LsnPosition(6000, 5100, 6))]  # 5 is the dead letter
    # the key change is two events (seq 9 and 10), the update after it seq 11; the next transaction counts anew
    assert spans[3:] == [(LsnPosition(6000, 5100, 7), LsnPosition(6000, 5200, 10)),
                         (LsnPosition(6000, 5300, 11), LsnPosition(7000, 6100, 2))]
    assert reader.result.events == 6 + 12 + 3 and reader.result.dead_letters == 1


@pytest.mark.parametrize("confirmed", [0, 5008, 6008])
def test_a_replay_after_a_crash_rewrites_exactly_the_same_files(tmp_path: Path, confirmed: int) -> None:
    txs = workload()
    run_at(make_reader(tmp_path), [m for t in txs for m in t], target=7000)
    before = lake_files(tmp_path)
    replayer = make_reader(tmp_path, confirmed)  # the crash: nothing after `confirmed` was acknowledged
    assert replayer._states["t"].plan.active
    resent = [m for t in txs if t[-1][1] + 8 > confirmed for m in t]  # whole transactions from the boundary
    run_at(replayer, [(relation("id", "note"), 0), *resent], target=7000)
    assert lake_files(tmp_path) == before  # the same keys with the same rows, none added
    skipped = {0: 0, 5008: 2, 6008: 3}[confirmed]  # rows of a straddling file's unacknowledged part
    assert replayer.result.skipped_replayed == skipped
    assert not replayer._states["t"].plan.active


def test_a_replay_that_cannot_reproduce_an_orphan_stops_with_an_error(tmp_path: Path) -> None:
    from bankflow.lake.replay import ReplayMismatch

    txs = workload()
    run_at(make_reader(tmp_path), [m for t in txs for m in t], target=7000)
    before = lake_files(tmp_path)
    replayer = make_reader(tmp_path, 5008)
    changed = [(relation("id", "note"), 0), *(m for t in txs[1:] for m in t)]
    del changed[-7]  # an event of an orphan does not come back: the next file would start elsewhere
    with pytest.raises(ReplayMismatch, match="cannot reproduce the lake file"):
        run_at(replayer, changed, target=7000)
    assert lake_files(tmp_path) == before


def test_a_replay_that_passes_an_orphans_end_stops_with_an_error(tmp_path: Path) -> None:
    """An orphan whose last position the replay never meets (here: a key written before positions had `seq`)."""
    from bankflow.lake.replay import ReplayMismatch

    txs = workload()
    run_at(make_reader(tmp_path), [m for t in txs for m in t], target=7000)
    third = sorted((tmp_path / "lake").rglob("*.parquet"))[2]
    old_key = third.name.replace(".00000002-", "-").replace(".00000006.parquet", ".parquet")
    third.rename(third.with_name(old_key))
    replayer = make_reader(tmp_path, 5008)
    with pytest.raises(ReplayMismatch, match="without meeting it"):
        run_at(replayer, [(relation("id", "note"), 0), *(m for t in txs[1:] for m in t)], target=7000)
