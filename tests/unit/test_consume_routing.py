"""How the Kafka consumer cuts a partition's messages into files: at exactly max_rows, committing exactly the
offsets that are in written files. No broker is needed: messages are stand-ins and the commit is recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from bankflow.engines.debezium.consumer import _Consumer, _Partition
from bankflow.lake.batch import TableBatch
from bankflow.process import free_port
from bankflow.spec.loader import load_spec

SPEC = """\
version: 1
name: routing
source: {{type: postgres, database: db, schema: s}}
tables:
  - name: t
    primary_key: [id]
    columns:
      - {{name: id, type: bigint, nullable: false}}
cdc: {{engine: debezium, topic_prefix: p}}
kafka: {{bootstrap_servers: "127.0.0.1:{port}", group: g}}
lake:
  url: file://lake
  flush: {{max_rows: 3, max_bytes: 67108864, max_seconds: 600}}
warehouse: {{type: duckdb, path: wh.duckdb}}
"""
TOPIC = "p.s.t"


class Message:
    """What `_take` reads of a confluent_kafka Message."""

    def __init__(self, offset: int, tombstone: bool = False) -> None:
        self._offset = offset
        self._value = None if tombstone else orjson.dumps(
            {"op": "c", "after": {"id": offset}, "source": {"lsn": 100 + offset, "txId": 1, "ts_us": 1}})

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value


@pytest.fixture
def consumer(tmp_path: Path) -> Any:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(port=free_port("127.0.0.1")))
    resolved = load_spec(spec)
    run = _Consumer(resolved, None)
    table = resolved.spec.tables[0]
    state = _Partition(TOPIC, 0, table, TableBatch(table, stream=TOPIC, schema="s", topic=TOPIC), 0, [])
    run.states[(TOPIC, 0)] = state
    commits: list[int] = []

    def record(state: _Partition) -> None:  # instead of a synchronous commit to the broker
        if state.next_offset > state.committed:
            commits.append(state.next_offset)
            state.committed = state.next_offset

    run._commit = record
    yield run, state, commits
    run.consumer.close()


def test_a_run_that_fills_the_batch_exactly_flushes_it_and_commits_only_its_offsets(consumer: Any) -> None:
    run, state, commits = consumer
    run._take(state, [Message(0), Message(1), Message(2)])
    assert len(run.result.files) == 1 and commits == [3] and state.count == 0
    run._take(state, [Message(3), Message(4)])
    assert commits == [3], "offsets 3 and 4 are in no file yet: they must not be committed"
    assert state.count == 2 and len(run.result.files) == 1


def test_runs_are_cut_at_max_rows_and_tombstones_commit_with_the_next_file(consumer: Any) -> None:
    run, state, commits = consumer
    run._take(state, [Message(0), Message(1, tombstone=True), Message(2), Message(3), Message(4), Message(5),
                      Message(6), Message(7, tombstone=True)])
    # rows 0, 2, 3 → file 1 (commit 4); rows 4, 5, 6 → file 2 (commit 7); the tombstone at 7 waits
    assert commits == [4, 7] and len(run.result.files) == 2
    assert run.result.events == 6 and run.result.tombstones == 2
    assert state.next_offset == 8 and state.count == 0
    run._take(state, [Message(8)])
    run._flush(state)
    assert commits == [4, 7, 9]
    assert run.result.rows == 7
