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


def relation(*columns: str) -> bytes:
    return (b"R" + struct.pack(">I", 1) + b"s\0t\0f" + struct.pack(">h", len(columns))
            + b"".join(b"\x01" + c.encode() + b"\0" + struct.pack(">Ii", 25, -1) for c in columns))


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
