"""Debezium topics → Parquet in the lake, exactly once per (topic, partition, offset).

One confluent-kafka consumer in the spec's group, manual commits. Messages are routed by topic to a
`TableBatch` per (topic, partition); a batch becomes one Parquet file whose key carries the partition and the
offset range (`KafkaPosition`), and the offset is committed only after that file (and its dead letters) is
durable. So a crash between "file written" and "offset committed" leaves an *orphan*: a file beyond the
committed offset. When a partition is (re)assigned, its batches in the lake give a `bankflow.lake.replay.ReplayPlan`
(the same one the built-in reader uses) and the replay cuts its batches at exactly the orphans' end offsets,
rewriting the same keys instead of writing overlapping files.

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
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from bankflow.lake.batch import TableBatch
from bankflow.lake.filesystem import lake_filesystem
from bankflow.lake.gctune import large_young_generation
from bankflow.lake.positions import KafkaPosition
from bankflow.lake.replay import ReplayPlan, kafka_resume
from bankflow.lake.writer import LakeFile, LakeWriter
from bankflow.spec.loader import ResolvedSpec
from bankflow.spec.models import Table
from bankflow.stages.base import Progress

log = logging.getLogger(__name__)

BATCH_MESSAGES = 10_000  # consume() batch size: large enough to amortise the call, small enough to stay responsive
POLL_TIMEOUT = 0.1  # seconds; also the idle latency of follow mode
PROGRESS_EVERY = 1.0  # seconds between progress callbacks


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
    committed: dict[str, dict[int, int]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events, "tombstones": self.tombstones, "dead_letters": self.dead_letters,
            "rows": self.rows, "bytes": self.bytes, "files": list(self.files),
            "dead_letter_files": self.dead_letter_files, "commits": self.commits,
            "orphans_replayed": self.orphans_replayed, "skipped_replayed": self.skipped_replayed,
            "dropped_partial": self.dropped_partial,
            "committed": {t: dict(p) for t, p in self.committed.items()}, "seconds": round(self.seconds, 3),
        }


class _Positions(Sequence[KafkaPosition]):
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
    def __getitem__(self, index: slice) -> _Positions: ...

    def __getitem__(self, index: int | slice) -> KafkaPosition | _Positions:
        if isinstance(index, slice):
            return _Positions(self.partition, self.offsets[index])
        return KafkaPosition(self.partition, self.offsets[index])


class _Partition:
    """Per-(topic, partition) state: the open batch, the consumed position and the replay plan.

    Message values wait in `values`/`offsets` until the end of a `consume()` batch (or a flush point) and then
    go to the batch in one bulk call.
    """

    __slots__ = ("batch", "committed", "count", "next_offset", "offsets", "partition", "plan", "table", "topic",
                 "values")

    def __init__(self, topic: str, partition: int, table: Table, batch: TableBatch, start: int,
                 plan: ReplayPlan[KafkaPosition] | None = None) -> None:
        self.topic = topic
        self.partition = partition
        self.table = table
        self.batch = batch
        self.next_offset = start  # offset after the last message consumed (tombstones included)
        self.committed = start
        self.plan: ReplayPlan[KafkaPosition] = plan if plan is not None else ReplayPlan()
        self.count = 0  # events (rows + dead letters) in the open batch, pending values included
        self.values: list[bytes] = []
        self.offsets: list[int] = []

    def drain(self) -> None:
        """Hand the pending message values to the batch (one bulk conversion)."""
        if self.values:
            values, offsets = self.values, self.offsets
            self.values, self.offsets = [], []
            self.batch.append_debezium_values(values, _Positions(self.partition, offsets))


def consumer_config(resolved: ResolvedSpec) -> dict[str, Any]:
    """librdkafka settings: manual commits, earliest, short fetch wait (Tansu's long-poll never returns early)."""
    kafka = resolved.spec.kafka
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": kafka.group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
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
    """One consumer's run; split from the function so callbacks and the loop share state without globals."""

    def __init__(self, resolved: ResolvedSpec, progress: Callable[[dict[str, Any]], None] | None) -> None:
        from confluent_kafka import Consumer

        self.resolved = resolved
        spec = resolved.spec
        self.schema = spec.source.schema_name
        self.tables = dict(spec.tables_by_topic)
        self.flush = spec.lake.flush
        fs, root = lake_filesystem(resolved)
        self.writer = LakeWriter(fs, root, spec.lake)
        self.result = ConsumeResult()
        self.states: dict[tuple[str, int], _Partition] = {}
        self.assigned_once = False
        self.progress = progress
        self._last_progress = 0.0
        self.consumer = Consumer(consumer_config(resolved), logger=log)

    # ---- orphans

    def _replay_plan(self, topic: str, partition: int, start: int,
                     batches: list[LakeFile]) -> ReplayPlan[KafkaPosition]:
        """What a partition resumed at `start` must reproduce of the topic's batches in the lake."""
        plan = ReplayPlan.resume(batches, kafka_resume(partition, start))
        if plan.active:
            log.info("%s[%d]: resuming at committed offset %d: %s, to the same keys", topic, partition, start,
                     plan.describe())
            self.result.orphans_replayed += len(plan.cuts)
        return plan

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
            if start < 0:  # nothing committed: the earliest retained offset
                low, _high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
                start = max(low, 0)
                starts.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
            else:
                starts.append(TopicPartition(topic, partition, start))
            if topic not in listings:  # Parquet files and dead-letter-only batches, every partition
                listings[topic] = self.writer.list_batches(stream=topic, table=table.name, schema=self.schema,
                                                           topic=topic)
            plan = self._replay_plan(topic, partition, start, listings[topic])
            batch = TableBatch(table, stream=topic, schema=self.schema, topic=topic)
            self.states[(topic, partition)] = _Partition(topic, partition, table, batch, start, plan)
        consumer.assign(starts)

    def on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """Give partitions up cleanly: their batches become files and their offsets are committed first."""
        log.debug("revoked %s", [(tp.topic, tp.partition) for tp in partitions])
        for tp in partitions:
            state = self.states.pop((tp.topic, tp.partition), None)
            if state is not None:
                self._finish(state)
        consumer.unassign()
        log.debug("revoke done")

    # ---- flushing and committing

    def _flush(self, state: _Partition) -> None:
        state.drain()
        batch = state.batch
        if state.count:
            written = self.writer.write_batch(batch)
            if written.key is not None:
                self.result.files.append(written.key)
            self.result.rows += written.rows
            self.result.bytes += written.bytes
            self.result.dead_letters += written.dead_letters
            if written.dead_letters:
                self.result.dead_letter_files += 1
            state.count = 0
        self._commit(state)

    def _commit(self, state: _Partition) -> None:
        from confluent_kafka import TopicPartition

        if state.next_offset <= state.committed:
            return
        log.debug("commit %s[%d] %d", state.topic, state.partition, state.next_offset)
        self.consumer.commit(offsets=[TopicPartition(state.topic, state.partition, state.next_offset)],
                             asynchronous=False)
        state.committed = state.next_offset
        self.result.commits += 1
        self.result.committed.setdefault(state.topic, {})[state.partition] = state.next_offset

    def _finish(self, state: _Partition) -> None:
        """Flush and commit, unless the partition is mid-replay: then drop the partial batch uncommitted."""
        if state.plan.active and state.count:
            self.result.dropped_partial += state.count
            state.values, state.offsets = [], []
            state.batch.clear()
            state.count = 0
            return
        self._flush(state)

    # ---- the loop

    def _emit_progress(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self.progress({"events": self.result.events, "files": len(self.result.files),
                           "dead_letters": self.result.dead_letters, "tombstones": self.result.tombstones})

    def _handle(self, messages: list[Any]) -> None:
        """Route messages, in runs of one (topic, partition), to that partition's pending values."""
        from confluent_kafka import KafkaError

        states = self.states
        n = len(messages)
        i = 0
        while i < n:
            first = messages[i]
            err = first.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
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
            state.drain()

    def _take(self, state: _Partition, run: list[Any]) -> None:
        """A run of messages for a partition that is not replaying: append, cutting batches at max_rows."""
        values = [m.value() for m in run]
        offsets = [m.offset() for m in run]
        state.next_offset = offsets[-1] + 1
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
                state.values.extend(values)
                state.offsets.extend(offsets)
                state.count += len(values)
                return
            state.values.extend(values[:room])
            state.offsets.extend(offsets[:room])
            state.count += room
            next_offset = state.next_offset
            state.next_offset = offsets[room - 1] + 1  # the file ends here: commit exactly up to here
            self._flush(state)
            state.next_offset = next_offset
            values, offsets = values[room:], offsets[room:]

    def _take_replay(self, state: _Partition, run: list[Any]) -> None:
        """A run for a partition with a replay plan: message by message, skipping what a straddling file holds
        and cutting at exactly the orphans' end offsets."""
        plan = state.plan
        partition = state.partition
        for msg in run:
            offset = msg.offset()
            value = msg.value()
            state.next_offset = offset + 1
            if value is None:
                self.result.tombstones += 1
                continue
            position = KafkaPosition(partition, offset)
            if plan.skip(position):
                self.result.skipped_replayed += 1
                continue
            self.result.events += 1
            state.values.append(value)
            state.offsets.append(offset)
            state.count += 1
            if plan.active:
                if plan.cut_due(position) is not None:
                    self._flush(state)
            elif state.count >= self.flush.max_rows:
                self._flush(state)

    def _policy_flush(self) -> None:
        flush = self.flush
        for state in list(self.states.values()):
            batch = state.batch
            if state.plan.active:
                continue
            if state.count and (batch.approx_bytes >= flush.max_bytes or batch.age_seconds >= flush.max_seconds):
                self._flush(state)

    def _caught_up(self) -> bool:
        from confluent_kafka import TopicPartition

        if not self.assigned_once:
            return False
        for state in self.states.values():
            _low, high = self.consumer.get_watermark_offsets(
                TopicPartition(state.topic, state.partition), timeout=10, cached=False)
            if state.next_offset < high:
                log.debug("not caught up: %s[%d] at %d < %d", state.topic, state.partition, state.next_offset,
                          high)
                return False
        return True

    def run(self, follow: bool, stop: threading.Event | None,
            assignment: list[tuple[str, int]] | None = None) -> ConsumeResult:
        from confluent_kafka import TopicPartition

        started = time.monotonic()
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
                    if not messages and not follow and self._caught_up():
                        break
                for state in list(self.states.values()):
                    self._finish(state)
        finally:
            consumer.close()
        self.result.seconds = time.monotonic() - started
        self._emit_progress(force=True)
        return self.result

    def on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        """Partitions lost (session expired): someone else may own them already, so write and commit nothing."""
        for tp in partitions:
            state = self.states.pop((tp.topic, tp.partition), None)
            if state is not None and state.count:
                self.result.dropped_partial += state.count
        consumer.unassign()


def consume_to_lake(resolved: ResolvedSpec, *, follow: bool = False, stop: threading.Event | None = None,
                    progress: Callable[[dict[str, Any]], None] | None = None,
                    assignment: list[tuple[str, int]] | None = None) -> ConsumeResult:
    """Consume the spec's topics into the lake; catch up and return, or (`follow`) run until `stop` is set.

    By default the consumer subscribes (group rebalancing); `assignment` pins it to those (topic, partition)s
    instead, which `run_workers` uses so N workers never go through a rebalance.
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


# ---------------------------------------------------------------- several workers


def _worker_main(index: int, resolved: ResolvedSpec, follow: bool, queue: Any, progress: bool,
                 assignment: list[tuple[str, int]] | None) -> None:
    """Child process body: SIGTERM/SIGINT stop the loop cleanly (flush + commit), the result goes to `queue`.

    The parent stops workers with SIGTERM rather than a shared multiprocessing.Event: setting such an event
    blocks forever once a process that waited on it was killed with SIGKILL.
    """
    from bankflow.log import configure, configure_worker

    configure_worker(f"worker{index}")  # the parent CLI's level and format (a spawned process has no handler)
    if os.environ.get("BANKFLOW_CONSUME_DEBUG"):
        configure(verbose=2, prefix=f"worker{index} %(process)d ")
        import faulthandler

        faulthandler.register(signal.SIGUSR1, all_threads=True)
    local_stop = threading.Event()

    def on_signal(_signo: int, _frame: Any) -> None:
        local_stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def report(info: dict[str, Any]) -> None:
        queue.put(("progress", index, os.getpid(), info))

    result = consume_to_lake(resolved, follow=follow, stop=local_stop, progress=report if progress else None,
                             assignment=assignment)
    queue.put(("result", index, os.getpid(), result.to_dict()))


def run_workers(resolved: ResolvedSpec, *, workers: int, follow: bool, progress: bool,
                max_restarts: int | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """N consumer processes committing in the spec's group; a worker that dies is replaced (same partitions).

    When the topics exist, partitions are dealt out statically (round robin) instead of through group
    rebalances: Tansu's group coordinator can stall when members join, die and rejoin, and each JoinGroup costs
    half a session timeout there. A replaced worker replays its predecessor's orphan files to the same keys.
    If some topic does not exist yet, workers subscribe and rely on rebalancing (revoke → flush + commit).
    """
    import multiprocessing as mp
    import queue as queue_mod

    if workers < 1:
        raise ValueError("workers must be >= 1")
    plan: list[list[tuple[str, int]] | None] = [None] * workers
    if workers > 1:
        found, missing = topic_partitions(resolved)
        if missing:
            log.warning("topics %s do not exist yet: %d workers subscribe and rebalance", missing, workers)
        elif found:
            workers = min(workers, len(found))
            plan = [found[i::workers] for i in range(workers)]
    ctx = mp.get_context("spawn")
    shared_stop = threading.Event()
    results: list[dict[str, Any]] = []
    progress_by_worker: dict[int, dict[str, Any]] = {}
    display = Progress(progress)
    restarts = 0
    limit = 3 * workers if max_restarts is None else max_restarts
    failures: list[str] = []
    queue: Any = ctx.Queue()
    procs: dict[int, Any] = {}
    started = time.monotonic()
    reported: set[int] = set()

    def spawn(index: int) -> None:
        proc = ctx.Process(target=_worker_main, args=(index, resolved, follow, queue, progress,
                                                         plan[index]),
                           name=f"bankflow-consume-{index}", daemon=False)
        proc.start()
        procs[index] = proc

    def drain(timeout: float) -> None:
        try:
            kind, index, pid, payload = queue.get(timeout=timeout)
        except queue_mod.Empty:
            return
        if kind == "result":
            results.append({"worker": index, "pid": pid, **payload})
            reported.add(pid)
        else:
            progress_by_worker[index] = payload
            if progress:
                total = sum(int(p.get("events", 0)) for p in progress_by_worker.values())
                files = sum(int(p.get("files", 0)) for p in progress_by_worker.values())
                rate = total / max(time.monotonic() - started, 1e-6)
                display.update("consume", f"{len(procs)} workers, {total:,} events ({rate:,.0f}/s), {files} files")

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    in_main = threading.current_thread() is threading.main_thread()

    def stop_all() -> None:
        shared_stop.set()
        for proc in procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    def on_signal(_signo: int, _frame: Any) -> None:
        stop_all()

    if in_main:
        for sig in previous:
            signal.signal(sig, on_signal)
    try:
        for i in range(workers):
            spawn(i)
        while procs:
            if stop is not None and stop.is_set() and not shared_stop.is_set():
                stop_all()
            drain(0.2)
            for index, proc in list(procs.items()):
                if proc.is_alive():
                    continue
                proc.join()
                while proc.pid not in reported and proc.exitcode == 0:
                    before = len(reported)
                    drain(1.0)
                    if len(reported) == before:
                        break
                del procs[index]
                if proc.exitcode != 0 or proc.pid not in reported:
                    failures.append(f"worker {index} (pid {proc.pid}) exited with {proc.exitcode}")
                    if not shared_stop.is_set() and restarts < limit:
                        restarts += 1
                        spawn(index)
        while True:  # results that arrived after the last process ended
            before = len(results)
            drain(0.05)
            if len(results) == before:
                break
    finally:
        if procs:
            stop_all()
        for proc in procs.values():
            proc.join(timeout=30)
        if in_main:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    total: dict[str, Any] = {"workers": workers, "restarts": restarts, "failures": failures,
                             "events": 0, "tombstones": 0, "dead_letters": 0, "rows": 0, "bytes": 0,
                             "files": [], "commits": 0, "orphans_replayed": 0, "skipped_replayed": 0,
                             "dropped_partial": 0,
                             "seconds": round(time.monotonic() - started, 3), "per_worker": results}
    for r in results:
        for key in ("events", "tombstones", "dead_letters", "rows", "bytes", "commits", "orphans_replayed",
                    "skipped_replayed", "dropped_partial"):
            total[key] += int(r.get(key, 0))
        total["files"].extend(r.get("files", []))
    total["files"] = sorted(set(total["files"]))
    return total
