"""How the Kafka consumer cuts a partition's messages into files: at exactly max_rows, committing exactly the
offsets that are in written files. No broker is needed: messages are stand-ins and the commit is recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from bankflow.engines.debezium.consumer import _Consumer
from bankflow.engines.debezium.partitions import Partition
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


def recorded_commits(run: Any) -> list[int]:
    """The offsets the partitions commit, recorded instead of a synchronous commit to the broker."""
    commits: list[int] = []

    def record(topic: str, partition: int, offset: int) -> None:
        assert (topic, partition) == (TOPIC, 0)
        commits.append(offset)

    run.partitions.commit_offset = record
    return commits


@pytest.fixture
def consumer(tmp_path: Path) -> Any:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(port=free_port("127.0.0.1")))
    resolved = load_spec(spec)
    run = _Consumer(resolved, None)
    state = run.partitions.open(TOPIC, 0, resolved.spec.tables[0], 0, [])
    commits = recorded_commits(run)
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
    run.partitions.flush(state)
    assert commits == [4, 7, 9]
    assert run.result.rows == 7


# ---------------------------------------------------------------- replay (bankflow.lake.replay.ReplayPlan)


class RoutedMessage(Message):
    """What `_handle` reads as well: topic, partition, error."""

    def __init__(self, offset: int, tombstone: bool = False, value: bytes | None = None) -> None:
        super().__init__(offset, tombstone)
        if value is not None:
            self._value = value

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def error(self) -> None:
        return None


def resumed(run: Any, start: int) -> tuple[Partition, list[int]]:
    """The partition as a new owner sees it after a crash: committed at `start`, the lake as the crash left it."""
    table = run.tables[TOPIC]
    batches = run.writer.list_batches(stream=TOPIC, table=table.name, schema=run.partitions.schema, topic=TOPIC)
    state = run.partitions.open(TOPIC, 0, table, start, batches)
    return state, recorded_commits(run)


def lake_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.suffix in (".parquet", ".jsonl")}


def test_a_crash_before_the_commit_is_replayed_to_the_same_keys_whatever_the_flush_policy(
        consumer: Any, tmp_path: Path) -> None:
    run, state, commits = consumer
    messages = [RoutedMessage(0), RoutedMessage(1), RoutedMessage(2, tombstone=True), RoutedMessage(3),
                RoutedMessage(4), RoutedMessage(5), RoutedMessage(6), RoutedMessage(7)]
    run._handle(messages)
    run.partitions.flush(state)
    before = lake_files(tmp_path)
    assert len(before) == 3 and commits == [4, 7, 8]

    # nothing was committed (the crash came between the files and the commits); a new owner has another policy
    run.flush = run.flush.model_copy(update={"max_rows": 1000})
    state, commits = resumed(run, 0)
    assert len(state.plan.cuts) == 3 and run.result.orphans_replayed == 3
    run._handle(messages[:5])  # a consume() batch that ends inside the second orphan
    run._handle(messages[5:])
    assert commits == [4, 7, 8], "cut and committed exactly where the crashed run did"
    assert not state.plan.active and state.count == 0
    assert lake_files(tmp_path) == before


def test_a_file_straddling_the_committed_offset_is_skipped_not_rewritten(consumer: Any, tmp_path: Path) -> None:
    run, state, commits = consumer
    run._handle([RoutedMessage(i) for i in range(6)])  # files 0-2 and 3-5
    before = lake_files(tmp_path)
    state, commits = resumed(run, 4)  # as if the commit had stopped inside the second file
    assert state.plan.skip_until is not None and not state.plan.cuts
    run._handle([RoutedMessage(i) for i in range(4, 9)])
    assert run.result.skipped_replayed == 2
    assert commits == [9]  # offsets 6-8 make one file at max_rows, after the skipped, durable 4 and 5
    after = lake_files(tmp_path)
    assert len(after) == 3 and all(after[k] == v for k, v in before.items())


def test_a_dead_letter_only_batch_is_reproduced_to_its_key(consumer: Any, tmp_path: Path) -> None:
    run, state, commits = consumer
    bad = [RoutedMessage(i, value=b"{not json") for i in range(3)]
    run._handle([*bad, RoutedMessage(3)])
    run.partitions.flush(state)
    before = lake_files(tmp_path)
    assert sorted(Path(k).suffix for k in before) == [".jsonl", ".parquet"]
    state, commits = resumed(run, 0)
    assert len(state.plan.cuts) == 2
    run._handle([*bad, RoutedMessage(3)])
    assert commits == [3, 4]
    assert lake_files(tmp_path) == before


def test_a_partition_revoked_mid_replay_drops_its_partial_batch_uncommitted(consumer: Any, tmp_path: Path) -> None:
    run, state, commits = consumer
    run._handle([RoutedMessage(i) for i in range(3)])
    state, commits = resumed(run, 0)
    run._handle([RoutedMessage(0), RoutedMessage(1)])
    run.partitions.finish(state)
    assert commits == [] and run.result.dropped_partial == 2
