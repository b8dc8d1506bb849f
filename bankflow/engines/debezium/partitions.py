"""The Kafka consumer's partitions: per (topic, partition) the open batch, the consumed and committed offsets and
the replay plan, and the rule that keeps the lake exactly once: an offset is committed only after the file that
holds the events before it (and their dead letters) is durable.

So a crash between "file written" and "offset committed" leaves an *orphan*: a file beyond the committed
offset. When a partition is opened, its batches in the lake give a `bankflow.lake.replay.ReplayPlan` (the same
one the built-in reader uses); while the plan is active the consume loop cuts batches at exactly the orphans'
end offsets, rewriting the same keys instead of writing overlapping files, and a partition closed mid-replay
drops its partial batch uncommitted: the next owner replays the same range.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from bankflow.engines.debezium.resent import ResentFilter
from bankflow.lake.batch import ShapeChanged, TableBatch
from bankflow.lake.positions import KafkaPosition, LsnPosition, lsn_text
from bankflow.lake.replay import ReplayPlan, kafka_resume
from bankflow.lake.writer import LakeFile, LakeWriter
from bankflow.source.schema_changes import Observed, ShapeFollower, SourceType
from bankflow.spec.models import Table

log = logging.getLogger(__name__)

Commit = Callable[[str, int, int], None]  # (topic, partition, next offset): synchronous, done when it returns
# a lake file's Parquet metadata: "<offset>:<sha1 of the value>" of the file's last message, so that a consumer
# resuming after it can tell the log still holds that message (a recreated topic holds others there)
LAST_MESSAGE_KEY = b"bankflow.last_message"


def tail_digest(value: bytes | None) -> str:
    import hashlib

    return hashlib.sha1(value or b"", usedforsecurity=False).hexdigest()


@dataclass
class ConsumeResult:
    """What one consumer run did; `files` are the lake keys written (rewrites of orphans included)."""

    events: int = 0
    tombstones: int = 0
    dead_letters: int = 0
    rows: int = 0
    bytes: int = 0
    files: list[str] = field(default_factory=list)
    dead_letter_files: int = 0
    commits: int = 0
    orphans_replayed: int = 0
    skipped_replayed: int = 0
    dropped_partial: int = 0
    resent_dropped: int = 0  # changes Debezium produced again (a Connect restart), kept once
    committed: dict[str, dict[int, int]] = field(default_factory=dict)
    seconds: float = 0.0
    schema_changes: list[str] = field(default_factory=list)  # what evolve accepted, one line each
    stopped: str | None = None  # why a schema-change policy stopped the consumer (freeze)

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events, "tombstones": self.tombstones, "dead_letters": self.dead_letters,
            "rows": self.rows, "bytes": self.bytes, "files": list(self.files),
            "dead_letter_files": self.dead_letter_files, "commits": self.commits,
            "orphans_replayed": self.orphans_replayed, "skipped_replayed": self.skipped_replayed,
            "dropped_partial": self.dropped_partial, "resent_dropped": self.resent_dropped,
            "committed": {t: dict(p) for t, p in self.committed.items()}, "seconds": round(self.seconds, 3),
            "schema_changes": list(self.schema_changes), "stopped": self.stopped,
        }


class Positions(Sequence[KafkaPosition]):
    """`KafkaPosition`s of one partition, built only when looked at (the bulk path needs first and last)."""

    __slots__ = ("offsets", "partition")

    def __init__(self, partition: int, offsets: list[int]) -> None:
        self.partition = partition
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets)

    @overload
    def __getitem__(self, index: int) -> KafkaPosition: ...

    @overload
    def __getitem__(self, index: slice) -> Positions: ...

    def __getitem__(self, index: int | slice) -> KafkaPosition | Positions:
        if isinstance(index, slice):
            return Positions(self.partition, self.offsets[index])
        return KafkaPosition(self.partition, self.offsets[index])


class Partition:
    """One (topic, partition): the open batch, the consumed and committed offsets, the replay plan.

    Message values wait in `values`/`offsets` until the end of a `consume()` batch (or a flush point) and then
    go to the batch in one bulk call; `count` is the open batch's events, pending values included.
    """

    __slots__ = ("batch", "committed", "count", "first_seen", "frozen_at", "last_offset", "last_value",
                 "next_offset", "offsets", "partition", "plan", "resent", "tail", "topic", "values")

    def __init__(self, topic: str, partition: int, batch: TableBatch, start: int,
                 plan: ReplayPlan[KafkaPosition] | None = None) -> None:
        self.topic = topic
        self.partition = partition
        self.batch = batch
        self.next_offset = start  # offset after the last message consumed (tombstones included)
        self.last_offset = -1  # the last message consumed, and its value (follow mode checks the log still has it)
        self.last_value: bytes | None = None
        self.first_seen: tuple[int, str] | None = None  # the first message this run read: (offset, digest)
        self.tail: tuple[int, bytes] | None = None  # the last event given to the batch (named in its file)
        self.committed = start
        self.plan: ReplayPlan[KafkaPosition] = plan if plan is not None else ReplayPlan()
        self.count = 0
        self.values: list[bytes] = []
        self.offsets: list[int] = []
        self.frozen_at: int | None = None  # a schema change stopped the partition here: nothing past it commits
        # copies of changes Debezium sent again (the key columns as the lake names them)
        self.resent = ResentFilter([batch.lake_names.get(k, k) for k in batch.table.primary_key])

    def add(self, values: list[bytes], offsets: list[int]) -> None:
        if self.frozen_at is not None:
            return
        self.values.extend(values)
        self.offsets.extend(offsets)
        self.count += len(values)
        if values:
            self.tail = (offsets[-1], values[-1])

    def drain(self) -> None:
        """Hand the pending message values to the batch (one bulk conversion)."""
        if self.values:
            values, offsets = self.values, self.offsets
            self.values, self.offsets = [], []
            self.batch.append_debezium_values(values, Positions(self.partition, offsets))

    def drop(self) -> int:
        """Forget the open batch, written and committed nowhere; returns how many events it held."""
        dropped = self.count
        self.values, self.offsets = [], []
        self.batch.clear()
        self.count = 0
        return dropped


class Partitions:
    """The partitions one consumer owns, keyed by (topic, partition), and how their batches become durable files
    and committed offsets. `commit` is the group's synchronous offset commit."""

    def __init__(self, writer: LakeWriter, schema: str, commit: Commit, result: ConsumeResult,
                 shapes: ShapeFollower | None = None) -> None:
        self.writer = writer
        self.schema = schema
        self.commit_offset = commit
        self.result = result
        self.shapes = shapes  # None: events with other columns are dead letters (no policy to follow)
        self.states: dict[tuple[str, int], Partition] = {}
        self.declared: dict[str, Table] = {}  # topic → the spec's table (its schema-change policy)

    def open(self, topic: str, partition: int, table: Table, start: int, batches: list[LakeFile]) -> Partition:
        """Own a partition resumed at offset `start`; `batches` are the topic's batches in the lake."""
        self.declared[topic] = table
        shape = table if self.shapes is None else self.shapes.start_at(table)
        state = Partition(topic, partition, self._batch(shape, topic), start,
                          self.replay_plan(topic, partition, start, batches))
        state.resent.load(self.writer.fs, [f for f in batches if isinstance(f.first, KafkaPosition)
                                           and f.first.partition == partition], start)
        self.states[(topic, partition)] = state
        return state

    def _batch(self, shape: Table, topic: str) -> TableBatch:
        names = self.shapes.lake_names.get(shape.name) if self.shapes is not None else None
        batch = TableBatch(shape, stream=topic, schema=self.schema, topic=topic, lake_names=names)
        batch.follow_shapes = self.shapes is not None
        if self.shapes is not None:
            batch.not_carried = frozenset(self.shapes.history.not_carried(shape.name))
        return batch

    @property
    def stopped(self) -> str | None:
        return self.result.stopped

    def drain(self, state: Partition) -> None:
        """Hand the pending values to the batch; a schema change among them is decided by the table's policy:
        the batch so far becomes a file, then the rest goes on in the new shape, or the partition stops there."""
        seen: set[int] = set()
        while state.values:
            values, offsets = state.values, state.offsets
            try:
                state.drain()
            except ShapeChanged as change:
                offset = change.position.offset
                index = offsets.index(offset)
                rest_values, rest_offsets = values[index:], offsets[index:]
                state.count -= len(rest_values)  # not in the batch
                if offset in seen:
                    raise RuntimeError(f"{state.topic}[{state.partition}] offset {offset}: {change}") from change
                seen.add(offset)
                self.flush(state, through=offset)  # what came before, in the old shape
                if not self._follow(state, change):
                    state.frozen_at = offset
                    return
                state.values, state.offsets = rest_values, rest_offsets
                state.count += len(rest_values)

    def _follow(self, state: Partition, change: ShapeChanged) -> bool:
        """The policy's answer to an event with other columns; False: the partition stops before it."""
        assert self.shapes is not None
        declared = self.declared[state.topic]
        shape = state.batch.table
        mismatch = change.mismatch
        live = self.shapes.catalog.live_columns(self.schema, declared.name)
        known = {c.name for c in shape.columns}
        # JSON carries no types: a field the shape has is taken to be of its type; a new one has the live
        # table's (or none, when the column is gone again: it cannot be carried)
        observed = [Observed(k, None if k in known else live.get(k, SourceType("a column no longer in the source",
                                                                                typcategory="?")))
                    for k in mismatch.keys]
        lsn = mismatch.row.lsn
        where = (f"table {declared.name}, topic {state.topic}[{state.partition}] offset {change.position.offset} "
                 f"(LSN {lsn_text(lsn)})")
        decision = self.shapes.observe(declared, shape, observed, set(live), LsnPosition(lsn, lsn),
                                       mismatch.row.ts_us, where)
        if decision.stop is not None:
            self.result.stopped = decision.stop
            return False
        if decision.shape is not None:
            state.batch = self._batch(decision.shape, state.topic)
            self.result.schema_changes = list(self.shapes.accepted)
        else:  # an event from before a column the live table has: that column is absent in it
            state.batch.absent_ok = state.batch.absent_ok | set(mismatch.missing)
        return True

    def replay_plan(self, topic: str, partition: int, start: int,
                    batches: list[LakeFile]) -> ReplayPlan[KafkaPosition]:
        """What a partition resumed at `start` must reproduce of the topic's batches in the lake."""
        plan = ReplayPlan.resume(batches, kafka_resume(partition, start))
        if plan.active:
            log.info("%s[%d]: resuming at committed offset %d: %s, to the same keys", topic, partition, start,
                     plan.describe())
            self.result.orphans_replayed += len(plan.cuts)
        return plan

    def flush(self, state: Partition, through: int | None = None) -> None:
        """Write the open batch durably, then commit up to `through` (default: everything consumed)."""
        self.drain(state)
        if state.count:
            tail = state.tail
            last = state.batch.last_position
            metadata = ({LAST_MESSAGE_KEY: f"{tail[0]}:{tail_digest(tail[1])}".encode()}
                        if tail is not None and isinstance(last, KafkaPosition) and last.offset == tail[0] else None)
            written = self.writer.write_batch(state.batch, row_filter=state.resent.filter, metadata=metadata)
            state.resent.written()
            result = self.result
            if written.dropped:
                result.resent_dropped += written.dropped
                log.warning("%s[%d]: %d change(s) Debezium sent again (a Kafka Connect restart) were already in "
                            "the lake: kept once", state.topic, state.partition, written.dropped)
            if written.key is not None:
                result.files.append(written.key)
            result.rows += written.rows
            result.bytes += written.bytes
            result.dead_letters += written.dead_letters
            if written.dead_letters:
                result.dead_letter_files += 1
            state.count = 0
        self.commit(state, state.next_offset if through is None else through)

    def commit(self, state: Partition, offset: int) -> None:
        if state.frozen_at is not None:
            offset = min(offset, state.frozen_at)
        if offset <= state.committed:
            return
        log.debug("commit %s[%d] %d", state.topic, state.partition, offset)
        self.commit_offset(state.topic, state.partition, offset)
        state.committed = offset
        self.result.commits += 1
        self.result.committed.setdefault(state.topic, {})[state.partition] = offset

    def finish(self, state: Partition) -> None:
        """Flush and commit, unless the partition is mid-replay: then drop the partial batch uncommitted."""
        if state.plan.active and state.count:
            self.result.dropped_partial += state.drop()
            return
        self.flush(state)

    def close(self, topic: str, partition: int) -> None:
        """Give a partition up cleanly (revoked): its batch becomes a file and its offset is committed first."""
        state = self.states.pop((topic, partition), None)
        if state is not None:
            self.finish(state)

    def close_all(self) -> None:
        for key in list(self.states):
            self.close(*key)

    def lose(self, topic: str, partition: int) -> None:
        """A partition lost (session expired): someone else may own it already, so write and commit nothing."""
        state = self.states.pop((topic, partition), None)
        if state is not None and state.count:
            self.result.dropped_partial += state.count
