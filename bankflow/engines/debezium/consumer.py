"""Debezium topics → Parquet in the lake, exactly once per (topic, partition, offset): the consume loop.

One confluent-kafka consumer in the spec's group, manual commits. The loop polls, routes each run of messages
of one (topic, partition) to that partition's pending values (`bankflow.engines.debezium.partitions`), cuts
batches where the flush policy or a replay plan says, and in catch-up mode notices when it is done. A batch
becomes one Parquet file whose key carries the partition and the offset range (`KafkaPosition`); the offset is
committed only after that file (and its dead letters) is durable, so a crash in between leaves an orphan that
the next owner reproduces to the same key.

Rules that keep it exactly once:

- flush + synchronous commit before a partition is given up (`on_revoke`) and at shutdown;
- while a partition is replaying orphans, no policy flush and no partial flush: on revoke/shutdown the
  partial batch is dropped uncommitted, and the next owner replays the same range;
- tombstones (value None) are skipped and counted; their offsets are committed with the next flush.

Catch-up mode (`follow=False`) stops when every assigned partition reached its high watermark *and* a poll came
back empty (Tansu reports watermarks slightly low, so the watermark alone would stop early).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from bankflow.engines.debezium.partitions import ConsumeResult, Partition, Partitions, tail_digest
from bankflow.lake.filesystem import lake_filesystem
from bankflow.lake.gctune import large_young_generation
from bankflow.lake.positions import KafkaPosition
from bankflow.lake.schema_history import SchemaHistory
from bankflow.lake.writer import LakeFile, LakeWriter
from bankflow.source.schema_changes import ShapeFollower, SourceCatalog, warehouse_widens
from bankflow.spec.loader import ResolvedSpec

__all__ = ["ConsumeResult", "consume_to_lake", "consumer_config", "topic_partitions"]

log = logging.getLogger(__name__)

BATCH_MESSAGES = 10_000  # consume() batch size: large enough to amortise the call, small enough to stay responsive
POLL_TIMEOUT = 0.1  # seconds; also the idle latency of follow mode
PROGRESS_EVERY = 1.0  # seconds between progress callbacks
LOG_CHECK_EVERY = 30.0  # follow mode: seconds between checks that each partition's log is still the one read
_MISSING = object()  # `_log_message`: the log has no message at that offset
WAY_FORWARD = ("Changes may be missing from the lake; the consumer stopped instead of skipping them. Way forward: "
               "take a new snapshot (delete the connector and its offsets in Kafka Connect, then bankflow down "
               "SPEC --drop-slot and apply), after resetting the group's offsets for the topic "
               "(kafka-consumer-groups --reset-offsets --to-earliest).")


def consumer_config(resolved: ResolvedSpec) -> dict[str, Any]:
    """librdkafka settings: manual commits, earliest, short fetch wait (Tansu's long-poll never returns early)."""
    kafka = resolved.spec.kafka
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": kafka.group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # every start offset is explicit (committed, or the log's beginning for a new group): an offset the log
        # no longer has (a topic emptied or recreated under a running consumer) is an error, never a silent jump
        "auto.offset.reset": "error",
        "fetch.wait.max.ms": 10,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        # A table empty at snapshot time has no topic yet: notice it when Debezium creates it, not 5 min later.
        "topic.metadata.refresh.interval.ms": 2000,
        # Large fetches: the broker's per-fetch latency, not its CPU, limited catch-up (Tansu: 40k events/s with
        # 4 MB per partition, 108k with 16 MB). The prefetch queue (librdkafka's default 64 MB) bounds memory.
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "queued.max.messages.kbytes": 64 * 1024,
        "security.protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        config["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username is not None:
        config["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password is not None:
        config["sasl.password"] = kafka.sasl_password
    return config


class _Consumer:
    """One consumer's run: the Kafka client, its rebalance callbacks and the loop, sharing the partitions."""

    def __init__(self, resolved: ResolvedSpec, progress: Callable[[dict[str, Any]], None] | None) -> None:
        from confluent_kafka import Consumer

        spec = resolved.spec
        self.resolved = resolved
        self.tables = dict(spec.tables_by_topic)
        self.flush = spec.lake.flush
        fs, root = lake_filesystem(resolved)
        self.writer = LakeWriter(fs, root, spec.lake)
        self.result = ConsumeResult()
        self.partitions = Partitions(self.writer, spec.source.schema_name, self._commit, self.result,
                                     _shape_follower(resolved, fs, root))
        self.assigned_once = False
        self._probed = False  # `_caught_up` looked past the watermark once (Tansu's lags at times)
        self.progress = progress
        self._last_progress = 0.0
        self.consumer = Consumer(consumer_config(resolved), logger=log)

    def _commit(self, topic: str, partition: int, offset: int) -> None:
        from confluent_kafka import TopicPartition

        self.consumer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)

    # ---- rebalance callbacks

    def on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self.assigned_once = True
        log.debug("assigned %s", [(tp.topic, tp.partition) for tp in partitions])
        if not partitions:
            return
        committed = consumer.committed(partitions, timeout=30)
        listings: dict[str, list[LakeFile]] = {}
        starts: list[Any] = []
        for tp in committed:
            topic, partition = tp.topic, tp.partition
            table = self.tables[topic]
            start = tp.offset
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30, cached=False)
            if topic not in listings:  # Parquet files and dead-letter-only batches, every partition
                listings[topic] = self.writer.list_batches(stream=topic, table=table.name,
                                                           schema=self.partitions.schema, topic=topic)
            written = [f.last.offset for f in listings[topic]
                       if isinstance(f.last, KafkaPosition) and f.last.partition == partition]
            problem = _out_of_range(topic, partition, start, low, high, max(written) if written else None)
            if problem is not None and self._log_holds(topic, partition, max([start - 1, *written])):
                problem = None  # the broker's high watermark lagged (Tansu reports it one low at times)
            if problem is None:
                problem = self._stopped_before(topic, partition) or self._not_what_was_read(
                    topic, partition, listings[topic])
            if problem is not None:
                self.result.stopped = problem
                log.error("%s", problem)
                return  # nothing assigned: the loop ends, nothing is committed
            if start < 0:  # nothing committed: the earliest retained offset
                start = max(low, 0)
                starts.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
            else:
                starts.append(TopicPartition(topic, partition, start))
            self.partitions.open(topic, partition, table, start, listings[topic])
        consumer.assign(starts)

    def _not_what_was_read(self, topic: str, partition: int, files: list[LakeFile]) -> str | None:
        """The partition's newest lake file names its last message (offset, digest): a log that no longer has
        that message there was recreated, even when it has grown past that offset since (and a recreated topic
        loses the group's committed offset, which would make every file look like an orphan to replay)."""
        import pyarrow.parquet as pq

        from bankflow.engines.debezium.partitions import LAST_MESSAGE_KEY

        mine = [f for f in files if isinstance(f.last, KafkaPosition) and f.last.partition == partition
                and f.key.endswith(".parquet")]
        if not mine:
            return None
        last = max(mine, key=lambda f: f.last.offset)
        with self.writer.fs.open(last.key, "rb") as handle:
            named = (pq.read_schema(handle).metadata or {}).get(LAST_MESSAGE_KEY)
        if named is None:
            return None
        offset_text, digest = named.decode().split(":", 1)
        offset = int(offset_text)
        held = self._log_message(topic, partition, offset)
        if held is not _MISSING and tail_digest(held) == digest:
            return None
        what = "is gone" if held is _MISSING else "is another one"
        return (f"{topic}[{partition}]: the message at offset {offset:,}, the last of lake file {last.key}, {what}: "
                f"the topic was emptied or recreated after the pipeline read it. {WAY_FORWARD}")

    def _log_holds(self, topic: str, partition: int, offset: int, timeout: float = 5.0) -> bool:
        """Whether the partition's log still holds the message at `offset`: the proof a watermark cannot give
        when it lags."""
        return offset < 0 or self._log_message(topic, partition, offset, timeout) is not _MISSING

    def _probe_consumer(self) -> Any:
        """A throwaway consumer for reading a log at given offsets: assigned, never subscribed, commits nothing
        (its own group id, so it never joins the pipeline's group)."""
        from confluent_kafka import Consumer

        config = {**consumer_config(self.resolved), "group.id": f"{self.resolved.spec.kafka.group}.probe"}
        return Consumer(config, logger=log)

    def _log_message(self, topic: str, partition: int, offset: int, timeout: float = 5.0) -> Any:
        """The value of the message at `offset` (None for a tombstone), read with a throwaway consumer that
        commits nothing; `_MISSING` when the log does not have that offset."""
        from confluent_kafka import KafkaError, TopicPartition

        probe = self._probe_consumer()
        try:
            probe.assign([TopicPartition(topic, partition, offset)])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = probe.poll(0.2)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._AUTO_OFFSET_RESET:
                        return _MISSING
                    continue
                return message.value() if message.offset() == offset else _MISSING
            return _MISSING
        finally:
            probe.close()

    def on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """Give partitions up cleanly: their batches become files and their offsets are committed first."""
        log.debug("revoked %s", [(tp.topic, tp.partition) for tp in partitions])
        for tp in partitions:
            self.partitions.close(tp.topic, tp.partition)
        consumer.unassign()
        log.debug("revoke done")

    def on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        """Partitions lost (session expired): someone else may own them already, so write and commit nothing."""
        for tp in partitions:
            self.partitions.lose(tp.topic, tp.partition)
        consumer.unassign()

    # ---- routing

    def _handle(self, messages: list[Any]) -> None:
        """Route messages, in runs of one (topic, partition), to that partition's pending values."""
        from confluent_kafka import KafkaError

        states = self.partitions.states
        n = len(messages)
        i = 0
        while i < n:
            first = messages[i]
            err = first.error()
            if err is not None:
                if err.code() == KafkaError._AUTO_OFFSET_RESET:
                    self._stop_out_of_range(first)
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                i += 1
                continue
            topic, partition = first.topic(), first.partition()
            j = i + 1
            while j < n:  # consume() returns long runs from one partition; find where this one ends
                msg = messages[j]
                if msg.partition() != partition or msg.topic() != topic or msg.error() is not None:
                    break
                j += 1
            state = states.get((topic, partition))
            if state is not None:  # else: a partition we no longer own
                run = messages if j - i == n else messages[i:j]
                if state.plan.active:
                    self._take_replay(state, run)
                else:
                    self._take(state, run)
            i = j
        for state in states.values():
            self.partitions.drain(state)

    def _stop_out_of_range(self, message: Any) -> None:
        """The broker no longer has the offset this partition is at: the topic was emptied or recreated (or
        retention deleted unread messages) while the consumer ran. Stop; what was read so far stays committed."""
        topic, partition = message.topic(), message.partition()
        state = self.partitions.states.get((topic, partition))
        at = state.next_offset if state is not None else "?"
        self._stop_for_good(topic, partition, f"the log no longer has offset {at} the consumer was at "
                            f"({message.error().str()}): the topic was emptied or recreated under the running "
                            "consumer")

    def _check_logs(self) -> None:
        """Follow mode, now and then: the first and the last message each partition read this run are still
        there. A topic recreated under the consumer whose new log already reaches past its position raises no
        offset error, but those offsets hold other messages."""
        for state in list(self.partitions.states.values()):
            if state.first_seen is None or state.plan.active:
                continue
            for offset, digest in (state.first_seen, (state.last_offset, tail_digest(state.last_value))):
                held = self._log_message(state.topic, state.partition, offset)
                if held is _MISSING or tail_digest(held) != digest:
                    self._stop_for_good(state.topic, state.partition,
                                        f"offset {offset} no longer holds the message the consumer read there: the "
                                        "topic was emptied or recreated under the running consumer")
                    return

    def _stop_for_good(self, topic: str, partition: int, what: str) -> None:
        """Stop, and leave a marker in the lake so every later consumer of the partition stops too until a person
        has taken the way forward (the group's offsets may look fine once the new log has grown)."""
        from bankflow.lake.atomic import put_atomic

        self.result.stopped = f"{topic}[{partition}]: {what}. {WAY_FORWARD}"
        log.error("%s", self.result.stopped)
        marker = self._stop_marker(topic, partition)
        put_atomic(self.writer.fs, marker, orjson.dumps({"topic": topic, "partition": partition,
                                                         "reason": self.result.stopped, "at": time.time()}))

    def _stop_marker(self, topic: str, partition: int) -> str:
        return f"{self.writer.root}/_bankflow/consumer-stops/{self.resolved.spec.kafka.group}/{topic}-{partition}.json"

    def _stopped_before(self, topic: str, partition: int) -> str | None:
        from bankflow.lake.atomic import read_json

        marker = self._stop_marker(topic, partition)
        data = read_json(self.writer.fs, marker)
        if data is None:
            return None
        return f"{data.get('reason')} (an earlier run stopped here; remove {marker} once that is done)"

    def _take(self, state: Partition, run: list[Any]) -> None:
        """A run of messages for a partition that is not replaying: append, cutting batches at max_rows."""
        values = [m.value() for m in run]
        offsets = [m.offset() for m in run]
        state.next_offset = offsets[-1] + 1
        state.last_offset, state.last_value = offsets[-1], values[-1]
        if state.first_seen is None:
            state.first_seen = (offsets[0], tail_digest(values[0]))
        if None in values:  # tombstones: skipped, their offsets committed with the next flush
            kept = [k for k, v in enumerate(values) if v is not None]
            self.result.tombstones += len(values) - len(kept)
            values = [values[k] for k in kept]
            offsets = [offsets[k] for k in kept]
        self.result.events += len(values)
        max_rows = self.flush.max_rows
        while values:
            room = max(max_rows - state.count, 1)  # the batch is flushed as soon as it holds max_rows
            if len(values) < room:
                state.add(values, offsets)
                return
            state.add(values[:room], offsets[:room])
            self.partitions.flush(state, through=offsets[room - 1] + 1)  # the file ends here: commit up to here
            values, offsets = values[room:], offsets[room:]

    def _take_replay(self, state: Partition, run: list[Any]) -> None:
        """A run for a partition with a replay plan: message by message, skipping what a straddling file holds
        and cutting at exactly the orphans' end offsets."""
        plan = state.plan
        partition = state.partition
        for msg in run:
            offset = msg.offset()
            value = msg.value()
            state.next_offset = offset + 1
            state.last_offset, state.last_value = offset, value
            if state.first_seen is None:
                state.first_seen = (offset, tail_digest(value))
            if value is None:
                self.result.tombstones += 1
                continue
            position = KafkaPosition(partition, offset)
            if plan.skip(position):
                self.result.skipped_replayed += 1
                continue
            self.result.events += 1
            state.add([value], [offset])
            if plan.active:
                if plan.cut_due(position) is not None:
                    self.partitions.flush(state)
            elif state.count >= self.flush.max_rows:
                self.partitions.flush(state)

    # ---- the loop

    def _policy_flush(self) -> None:
        """Batches that reached the flush policy's size or age become files (not while replaying)."""
        flush = self.flush
        for state in list(self.partitions.states.values()):
            batch = state.batch
            if state.plan.active:
                continue
            if state.count and (batch.approx_bytes >= flush.max_bytes or batch.age_seconds >= flush.max_seconds):
                self.partitions.flush(state)

    def _caught_up(self) -> bool:
        from confluent_kafka import TopicPartition

        if not self.assigned_once:
            # Debezium creates a table's topic with its first event: when none exists (the catch-up barrier
            # has passed, so nothing is on its way), there is nothing to consume
            metadata = self.consumer.list_topics(timeout=10)
            return not any(topic in metadata.topics and not metadata.topics[topic].error for topic in self.tables)
        for state in self.partitions.states.values():
            _low, high = self.consumer.get_watermark_offsets(
                TopicPartition(state.topic, state.partition), timeout=10, cached=False)
            if state.next_offset < high:
                log.debug("not caught up: %s[%d] at %d < %d", state.topic, state.partition, state.next_offset,
                          high)
                return False
        if self._probed:  # once per run: a workload writing on would otherwise be chased forever
            return True
        self._probed = True
        return not self._more_in_logs()

    def _more_in_logs(self, timeout: float = 1.5) -> bool:
        """Whether any owned partition's log has a message at the position the consumer is at: the watermark
        says caught up, but Tansu's lags behind its log by a produce batch at times."""
        from confluent_kafka import TopicPartition

        states = [s for s in self.partitions.states.values() if s.frozen_at is None]
        if not states:
            return False
        probe = self._probe_consumer()
        try:
            probe.assign([TopicPartition(s.topic, s.partition, s.next_offset) for s in states])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = probe.poll(0.1)
                if message is not None and message.error() is None:
                    log.debug("not caught up: %s[%d] has offset %d", message.topic(), message.partition(),
                              message.offset())
                    return True
            return False
        finally:
            probe.close()

    def _emit_progress(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self.progress({"events": self.result.events, "files": len(self.result.files),
                           "dead_letters": self.result.dead_letters, "tombstones": self.result.tombstones})

    def run(self, follow: bool, stop: threading.Event | None,
            assignment: list[tuple[str, int]] | None = None) -> ConsumeResult:
        from confluent_kafka import TopicPartition

        started = last_check = time.monotonic()
        consumer = self.consumer
        if assignment is None:
            consumer.subscribe(sorted(self.tables), on_assign=self.on_assign, on_revoke=self.on_revoke,
                               on_lost=self.on_lost)
        else:  # static: no group rebalances; offsets still committed in the spec's group
            self.on_assign(consumer, [TopicPartition(t, p) for t, p in assignment])
        try:
            with large_young_generation():
                while not (stop is not None and stop.is_set()):
                    messages = consumer.consume(num_messages=BATCH_MESSAGES, timeout=POLL_TIMEOUT)
                    if messages:
                        self._handle(messages)
                    self._policy_flush()
                    self._emit_progress()
                    if follow and time.monotonic() - last_check >= LOG_CHECK_EVERY:
                        last_check = time.monotonic()
                        self._check_logs()
                    if self.partitions.stopped is not None:
                        break  # a schema change under freeze: the partitions stay committed before it
                    if not messages and not follow and self._caught_up():
                        break
                self.partitions.close_all()
        finally:
            consumer.close()
            if self.partitions.shapes is not None:
                self.partitions.shapes.catalog.close()
        self.result.seconds = time.monotonic() - started
        self._emit_progress(force=True)
        return self.result


def _out_of_range(topic: str, partition: int, committed: int, low: int, high: int,
                  lake_last: int | None) -> str | None:
    """Why a partition cannot be consumed from where the group and the lake say it is (None: it can).

    The log must hold what the pipeline has not read (committed offset within [low, high]) and must not be
    shorter than what the lake already holds of it (a file up to offset L needs a log past L): otherwise the
    topic was emptied or recreated, or retention deleted unread messages, and going on would skip changes.
    """
    if committed >= 0 and committed > high:
        what = (f"the group committed offset {committed:,} but the log ends at {high:,}: the topic was emptied "
                "or recreated (or its retention expired everything) after the pipeline read it")
    elif committed >= 0 and committed < low:
        what = (f"the group committed offset {committed:,} but the log now starts at {low:,}: retention deleted "
                f"{low - committed:,} message(s) the pipeline never read")
    elif lake_last is not None and lake_last >= high:
        what = (f"the lake holds this partition up to offset {lake_last:,} but the log ends at {high:,}: the "
                "topic was emptied or recreated after the pipeline read it")
    else:
        return None
    return f"{topic}[{partition}]: {what}. {WAY_FORWARD}"


def _shape_follower(resolved: ResolvedSpec, fs: Any, root: str) -> ShapeFollower:
    """Schema changes are decided against the live source catalog, connected to only when one happens."""
    from bankflow.source import source_server

    server = source_server(resolved)
    return ShapeFollower(SchemaHistory(fs, root), SourceCatalog(lambda: server.connect_kwargs(start=False)),
                         resolved.spec.source.schema_name, warehouse_widens(resolved))


def consume_to_lake(resolved: ResolvedSpec, *, follow: bool = False, stop: threading.Event | None = None,
                    progress: Callable[[dict[str, Any]], None] | None = None,
                    assignment: list[tuple[str, int]] | None = None) -> ConsumeResult:
    """Consume the spec's topics into the lake; catch up and return, or (`follow`) run until `stop` is set.

    By default the consumer subscribes (group rebalancing); `assignment` pins it to those (topic, partition)s
    instead, which `run_workers` (`bankflow.engines.debezium.workers`) uses so N workers never go through a
    rebalance.
    """
    return _Consumer(resolved, progress).run(follow, stop, assignment)


def topic_partitions(resolved: ResolvedSpec, timeout: float = 10.0) -> tuple[list[tuple[str, int]], list[str]]:
    """(every (topic, partition) of the spec's topics that exists, topics that do not exist yet)."""
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {k: v for k, v in consumer_config(resolved).items()
                              if k in ("bootstrap.servers", "security.protocol") or k.startswith("sasl.")}
    config["logger"] = log  # librdkafka's connection errors go to logging, not straight to stderr
    metadata = AdminClient(config).list_topics(timeout=timeout)
    found: list[tuple[str, int]] = []
    missing: list[str] = []
    for topic in sorted(resolved.spec.tables_by_topic):
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            missing.append(topic)
        else:
            found.extend((topic, p) for p in sorted(meta.partitions))
    return found, missing
