"""The stream loop of the built-in engine: replication messages → per-table batches → lake → acknowledgement.

Events are decoded straight into per-table column batches (`bankflow.lake.batch.TableBatch`, text fast path
for inserts whose relation matches the spec; updates, deletes and anything unusual take the slow path through
`pgoutput.decode_message`), flushed to Parquet by the spec's flush policy in a background writer thread, and
the slot is acknowledged (``send_feedback(flush_lsn=…)``) only up to the end of the last transaction whose
events are all durable in the lake. A crash loses nothing (unacknowledged transactions are sent again) and
duplicates nothing: file keys come from source positions and a replay reproduces the crashed run's files
exactly (`bankflow.lake.replay`).

Positions are `LsnPosition(commit LSN, change LSN, seq)`: pgoutput sends whole transactions in commit order,
so the commit LSN orders the stream and the change LSN orders events inside a transaction; `seq` (the event's
index among its table's events in the transaction, from 0) tells apart the events that share a change
LSN (a COPY or multi-row INSERT writes many rows per WAL record; a key change is a delete and a create at the
update's LSN). Every event of the table counts, whatever becomes of it (a row, a dead letter, an event a replay
skips, both halves of a key change), so the slot's resend of a transaction (always whole, from its begin)
recomputes the same positions and a replay cuts and skips exactly; a transaction that spans two batches goes on
counting. The fast path pays nothing per row for it: a run of rows stores its first `seq` (see
`bankflow.lake.batch`), and the count is the table's event counter minus its value at the transaction's first
event. A replay that cannot reproduce an orphan exactly stops the run with an error (`ReplayMismatch`).

Modes: catch-up (default) reads `pg_current_wal_lsn()` at start and returns once every transaction committed
up to it is received and flushed; follow runs until `stop` is set, flushing by rows/bytes/seconds. When
nothing is buffered and no transaction is open, the server's position is acknowledged even without changes of
the spec's tables (idle acks), so the slot never holds WAL of other tables forever.

TRUNCATE is not a row change, so it cannot become rows of the table's change log. It is recorded (with a
warning) as a record in ``<dead_letter>/_truncates/`` keyed by its position, so it is visible and nothing is
silently lost; downstream models decide what a truncate means.
"""

from __future__ import annotations

import dataclasses
import logging
import select
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bankflow.engines.builtin import pgoutput
from bankflow.engines.builtin.backfill import (
    WATERMARK_PREFIX,
    Backfiller,
    Chunk,
    backfill_stream,
    key_text,
    parse_watermark,
)
from bankflow.engines.builtin.connection import connect, replication_connect
from bankflow.engines.builtin.slot import catalog_primary_keys, idle_slot, slot_row
from bankflow.engines.builtin.snapshot import new_batch
from bankflow.errors import StageError
from bankflow.lake.batch import DeadLetter, TableBatch
from bankflow.lake.filesystem import lake_filesystem
from bankflow.lake.gctune import large_young_generation
from bankflow.lake.positions import LsnPosition, lsn_text, parse_lsn, show_position
from bankflow.lake.replay import ReplayMismatch, ReplayPlan, lsn_resume
from bankflow.lake.schema_history import SchemaHistory
from bankflow.lake.writer import LakeFile, LakeWriter, WrittenFile
from bankflow.source.backfill import Coverage, covered, plan
from bankflow.source.schema_changes import Observed, ShapeFollower, SourceCatalog, warehouse_widens
from bankflow.spec.loader import ResolvedSpec
from bankflow.spec.models import Table

log = logging.getLogger(__name__)

_IDLE_WAIT = 0.2  # seconds to wait for the server when nothing is buffered
_ACK_INTERVAL = 0.5  # acknowledge completed transactions at least this often when no flush does it
_PERIODIC_EVERY = 4096  # messages between clock checks on a busy stream
_MAX_INFLIGHT = 2  # batches being written in the background before the reader waits (bounds memory)
_unpack_relid = struct.Struct(">I").unpack_from
_unpack_len = struct.Struct(">i").unpack_from
_OPS = {"Insert": "c", "Update": "u", "Delete": "d"}


@dataclass
class CdcRunResult:
    events: int = 0
    events_by_table: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    dead_letters: int = 0
    truncates: int = 0
    snapshot_rows: int = 0
    backfill_rows: int = 0  # op 'r' rows of backfills (tables new to the stream, `bankflow backfill`)
    backfills: list[str] = field(default_factory=list)  # the tables whose backfill completed in this run
    skipped_replayed: int = 0
    schema_changes: list[str] = field(default_factory=list)  # what evolve accepted, one line each
    start_lsn: str | None = None
    end_lsn: str | None = None  # catch-up target (pg_current_wal_lsn() at start)
    confirmed_lsn: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _TableState:
    """One spec table's open batch (and the lists the fast path appends to), replay plan and event counts."""

    __slots__ = ("base", "batch", "cols", "count_tx", "events", "lsns", "ops", "plan", "replaying", "seen",
                 "skipped", "table", "tx")

    def __init__(self, table: Table, batch: TableBatch, plan: ReplayPlan[LsnPosition]) -> None:
        self.table = table
        self.batch = batch
        self.plan = plan
        self.replaying = plan.active
        self.tx: Any = None  # the transaction whose run the fast path is appending to
        self.events = 0
        self.skipped = 0  # events a replay skipped (durable in a straddling file)
        self.count_tx: Any = None  # the transaction `base` belongs to
        self.base = 0  # events + skipped at the first event of the table in `count_tx`
        self.seen: set[tuple[Any, ...]] | None = None  # while a backfill runs: keys its stream changed since
        self.cols, self.ops, self.lsns = batch.text_sink()

    def refresh(self) -> None:
        self.tx = None
        self.cols, self.ops, self.lsns = self.batch.text_sink()

    def index_in(self, tx: Any) -> int:
        """The index in transaction `tx` of the table's next event (every event counts: rows, dead letters,
        skipped replays, both halves of a key change)."""
        seen = self.events + self.skipped
        if self.count_tx is not tx:
            self.count_tx = tx
            self.base = seen
        return seen - self.base


class _Rel:
    """A relation as the server announced it, bound to the spec table it feeds (or None: not in the spec)."""

    __slots__ = ("fast", "key_index", "mapping", "matches", "names", "relation", "state", "unknown", "width")

    def __init__(self, relation: pgoutput.Relation, state: _TableState | None,
                 not_carried: frozenset[str] = frozenset()) -> None:
        self.relation = relation
        self.state = state
        self.names = relation.column_names
        self.fast = False  # the relation's columns are the spec's, in the spec's order
        self.matches = False
        self.mapping: list[int | None] = []
        self.unknown: list[str] = []
        self.key_index: list[int] = []  # positions of the spec's primary key columns in the relation's tuples
        self.width = 0
        if state is not None:
            spec_names = state.batch.names
            self.width = len(spec_names)
            self.fast = tuple(spec_names) == self.names
            self.matches = self.fast  # `fast` is off while the table backfills (its keys are recorded)
            index = {n: i for i, n in enumerate(spec_names)}
            self.mapping = [index.get(n) for n in self.names]
            # a column the spec leaves out on purpose is dropped from the rows (in_spec_order), not unknown
            self.unknown = [n for n in self.names if n not in index and n not in not_carried]
            position = {n: i for i, n in enumerate(self.names)}
            self.key_index = [position[k] for k in state.table.primary_key if k in position]

    def key_changed(self, message: pgoutput.Update) -> bool:
        """An update whose old tuple carries a different primary key: the row moved to a new key.

        pgoutput sends the old key ('K') only when a key column changed, and the whole old row ('O') under
        REPLICA IDENTITY FULL; either way the key columns of the old tuple are the old key.
        """
        old = message.old
        if old is None or not self.key_index:
            return False
        new = message.new
        return any(old[i] != new[i] for i in self.key_index
                   if old[i] is not None and old[i] is not pgoutput.UNCHANGED and new[i] is not pgoutput.UNCHANGED)

    def keys_of(self, message: Any) -> list[tuple[Any, ...]]:
        """The primary key(s) a row change touches, as text (an update that moves its key: both)."""
        index = self.key_index
        found = []
        for values in (getattr(message, "new", None), getattr(message, "old", None)):
            if values is not None and index:
                found.append(tuple(key_text(values[i]) for i in index))
        return found

    def in_spec_order(self, values: list[Any]) -> list[Any]:
        if self.fast:
            return values
        row: list[Any] = [None] * self.width  # a spec column the relation lacks stays NULL
        for i, value in zip(self.mapping, values, strict=True):
            if i is not None:
                row[i] = value
        return row


def _row_of(rel: _Rel, message: Any) -> tuple[str, list[Any], str | None]:
    """(op, values, reason to dead-letter it or None) of an Insert, Update or Delete."""
    if isinstance(message, pgoutput.Insert):  # an unchanged TOAST marker here would be a server bug: refused
        op = "c"
        values, reason = pgoutput.resolve_unchanged(message.new, None, None, rel.names)
    elif isinstance(message, pgoutput.Update):
        op = "u"
        values, reason = pgoutput.resolve_unchanged(message.new, message.old, message.old_kind, rel.names)
    else:
        op, values, reason = "d", message.old, None
    if reason is None and rel.unknown:
        reason = f"unknown column(s) {rel.unknown} for table {rel.relation.name!r}"
    return op, values, reason


class StreamReader:
    """Reads the slot into the lake; `run()` once per reader (see the module docstring)."""

    def __init__(self, resolved: ResolvedSpec, connect_kwargs: dict[str, Any], *,
                 progress: Callable[[dict[str, Any]], None] | None = None, fresh_slot: bool = False) -> None:
        self.resolved = resolved
        self.fresh_slot = fresh_slot  # the slot was created (and snapshotted) in this run
        self.spec = resolved.spec
        self.connect_kwargs = connect_kwargs
        self.progress = progress
        fs, root = lake_filesystem(resolved)
        self.writer = LakeWriter(fs, root, self.spec.lake)
        self.schema = self.spec.source.schema_name
        self.flush = self.spec.lake.flush
        self.result = CdcRunResult(events_by_table={t.name: 0 for t in self.spec.tables})
        self._rels: dict[int, _Rel] = {}
        self._states: dict[str, _TableState] = {}
        self._done: deque[tuple[int, int]] = deque()  # (commit lsn, end lsn) of received transactions
        self._acked = 0
        self._ack_target = 0
        self._last_ack_time = 0.0
        self._last_keepalive_request = 0.0
        self._last_end = 0
        self._in_tx = False
        self._tx: Any = None  # (commit LSN, xid, commit time µs) of the open transaction
        self._follow = False
        self._target = 0
        self._cursor: Any = None
        self._pool: Any = None
        self._inflight: deque[tuple[int, Any]] = deque()  # (first commit LSN, future) of batches being written
        self.history = SchemaHistory(fs, root)
        self.shapes = ShapeFollower(self.history, SourceCatalog(connect_kwargs), self.schema,
                                    warehouse_widens(resolved))
        self._declared = {t.name: t for t in self.spec.tables}
        self._stopped: str | None = None  # why a freeze stopped the stream
        self.coverage = Coverage(fs, root, self.spec.cdc.slot)
        self.backfiller: Backfiller | None = None
        self._backfills: dict[str, dict[str, Any]] = {}  # id → marker of each backfill not finished in this run
        self._lows: dict[tuple[str, int], Any] = {}  # (backfill, chunk) → the low watermark's transaction
        self._last_poll = 0.0

    # ---- setup

    def _prepare(self, conn: Any) -> int:
        """Read the catch-up target, the slot's confirmed position and the replay plans; return the target."""
        spec = self.spec
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn()::text")
            target = parse_lsn(cur.fetchone()[0])
        confirmed = idle_slot(conn, spec.cdc.slot).confirmed_flush_lsn or 0
        self._acked = self._ack_target = confirmed
        self._report()  # the durable position the stream starts from (what a snapshot just wrote is below it)
        self.result.start_lsn = lsn_text(confirmed)
        self.result.end_lsn = lsn_text(target)
        primary_keys = catalog_primary_keys(conn, self.schema, [t.name for t in spec.tables])
        for table in spec.tables:
            catalog = primary_keys.get(table.name)
            if catalog is not None and catalog != list(table.primary_key):
                log.warning("table %s: primary key in the catalog %s differs from the spec %s", table.name,
                            catalog, table.primary_key)
            self._states[table.name] = self._table_state(table, confirmed)
        return target

    def _table_state(self, table: Table, confirmed: int) -> _TableState:
        """A table's state, with the plan that reproduces the files a crashed run left after `confirmed`."""
        files = self.writer.list_batches(stream=table.name, table=table.name, schema=self.schema,
                                         topic=self.spec.topic_for(table))
        plan = ReplayPlan.resume(files, lsn_resume(confirmed), strict=True)
        if plan.active:
            log.warning("table %s: replaying after an interrupted run: %s", table.name, plan.describe())
        shape = self.shapes.start_at(table, confirmed)
        return _TableState(shape, self._new_batch(shape, table.name), plan)

    def _new_batch(self, table: Table, stream: str) -> TableBatch:
        return new_batch(self.resolved, table, stream, self.shapes.lake_names.get(table.name))

    def _start(self) -> tuple[Any, Any, int]:
        conn = connect(self.connect_kwargs)
        try:
            target = self._prepare(conn)
        finally:
            conn.close()
        rconn = replication_connect(self.connect_kwargs)
        cur = rconn.cursor()
        cur.start_replication(slot_name=self.spec.cdc.slot, decode=False, status_interval=10,
                              options={"proto_version": "1", "publication_names": self.spec.cdc.publication,
                                       "messages": "true"})  # the backfills' watermarks
        self._cursor = cur
        return rconn, cur, target

    # ---- messages other than inserts: (payload, change LSN) → True when a catch-up run is complete

    def _handlers(self) -> dict[int, Callable[[bytes, int], bool | None]]:
        # 'Y' type, 'O' origin: nothing to record; 'M' message: a backfill's watermark, or someone else's
        return {66: self._on_begin, 67: self._on_commit, 85: self._on_row_change, 68: self._on_row_change,
                82: self._on_relation, 84: self._on_truncate, 77: self._on_message}

    def _on_begin(self, payload: bytes, _lsn: int) -> None:
        begin = pgoutput.decode_message(payload)
        self._tx = (begin.final_lsn, begin.xid, begin.commit_ts_us)
        self._in_tx = True

    def _on_commit(self, payload: bytes, _lsn: int) -> bool:
        commit = pgoutput.decode_message(payload)
        self._done.append((commit.commit_lsn, commit.end_lsn))
        self._last_end = commit.end_lsn
        self._in_tx = False
        return not self._follow and commit.end_lsn >= self._target and not self._backfills

    def _on_row_change(self, payload: bytes, lsn: int) -> None:
        rel = self._rels.get(_unpack_relid(payload, 1)[0])
        if rel is not None and rel.state is not None:
            self._change(rel, pgoutput.decode_message(payload), lsn)

    def _on_relation(self, payload: bytes, lsn: int) -> bool:
        relation: pgoutput.Relation = pgoutput.decode_message(payload)
        state = self._states.get(relation.name) if relation.namespace == self.schema else None
        if state is not None and not self._follow_shape(relation, state, lsn):
            return True  # a freeze: the stream stops before this event
        rel = _Rel(relation, state, frozenset(self.history.not_carried(relation.name)) if state else frozenset())
        if state is not None and state.seen is not None:
            rel.fast = False  # a backfill runs: every change of the table goes where its key is recorded
        if state is None:
            log.info("ignoring changes of %s.%s: not a table of the spec", relation.namespace, relation.name)
        else:
            if rel.unknown:
                log.warning("table %s has column(s) %s that the spec does not declare: its events go to the "
                            "dead-letter store until the spec or the publication matches", relation.name,
                            rel.unknown)
            if relation.replica_identity != "f" and state.table.replica_identity == "full":
                log.warning("table %s: the spec says replica_identity full but the source has %r; "
                            "updates lose before-images", relation.name, relation.replica_identity)
        self._rels[relation.relid] = rel
        return False

    # ---- schema changes

    def _follow_shape(self, relation: pgoutput.Relation, state: _TableState, lsn: int) -> bool:
        """Compare a relation with the shape the table's stream is in; evolve or stop. False: stop here."""
        catalog = self.shapes.catalog
        observed = [Observed(c.name, catalog.source_type(c.type_oid, c.type_modifier)) for c in relation.columns]
        tx = self._tx or (0, None, None)  # pgoutput sends relations inside a transaction; be safe if not
        # pgoutput sends a relation with no WAL position of its own: the transaction's commit LSN locates it
        where = f"table {relation.name}, in the transaction that commits at LSN {lsn_text(tx[0])}"
        shape = state.batch.table
        known = {c.name: c for c in shape.columns}
        if len(observed) == len(known) and all(
                o.name in known and o.type is not None and o.type.same_as(known[o.name]) for o in observed):
            return True  # the same shape (a relation is sent again at every session start)
        decision = self.shapes.observe(self._declared[relation.name], shape, observed, None,
                                       LsnPosition(tx[0], lsn), tx[2], where)
        if decision.stop is not None:
            self._stopped = decision.stop
            return False
        if decision.shape is not None:
            self._flush_state(state)  # a file holds one shape: what came before is written in the old one
            state.table = decision.shape
            state.batch = self._new_batch(decision.shape, state.batch.stream)
            state.refresh()
        return True

    def _on_truncate(self, payload: bytes, lsn: int) -> None:
        message: pgoutput.Truncate = pgoutput.decode_message(payload)
        tx = self._tx
        position = LsnPosition(tx[0], lsn)
        for relid in message.relids:
            rel = self._rels.get(relid)
            if rel is None or rel.state is None:
                continue
            name = rel.relation.name
            log.warning("TRUNCATE of %s at %s recorded in %s/_truncates (no row events are written for it)",
                        name, lsn_text(lsn), self.spec.lake.dead_letter)
            record = DeadLetter(name, position, "TRUNCATE", {
                "op": "truncate", "table": name, "schema": rel.relation.namespace, "cascade": message.cascade,
                "restart_identity": message.restart_identity,
                "source": {"lsn": lsn, "txId": tx[1], "ts_us": tx[2], "commit_lsn": tx[0]}})
            self.writer.dead_letters.write("_truncates", name, position, position, [record])
            self.result.truncates += 1

    # ---- inserts: the hot path

    def _inserts(self, msg: Any, read: Callable[[], Any]) -> tuple[Any, int]:
        """Insert messages from `msg` on, while they come (at most `_PERIODIC_EVERY`): an insert whose relation
        matches the spec has its text values appended straight to the column lists. Returns the first message
        not handled (None: nothing buffered) and how many were.

        One call per run of inserts, not per insert: inside a transaction they come back to back, and the
        per-row call would cost more than the loop around it.
        """
        rels = self._rels
        result = self.result
        max_rows, max_bytes = self.flush.max_rows, self.flush.max_bytes
        unpack_relid, unpack_len = _unpack_relid, _unpack_len
        tx = self._tx  # a run of inserts is inside one transaction
        for n in range(1, _PERIODIC_EVERY + 1):
            payload = msg.payload
            rel = rels.get(unpack_relid(payload, 1)[0])
            if rel is not None and (state := rel.state) is not None:
                if rel.fast and not state.replaying:
                    lsn = msg.data_start
                    if state.tx is not tx:
                        state.batch.begin_text_tx(tx[0], tx[1], tx[2], lsn, first_index=state.index_in(tx))
                        state.tx = tx
                    pos = 8  # 'I', relid, 'N', natts
                    for col in state.cols:
                        k = payload[pos]
                        if k == 116:  # 't'
                            length = unpack_len(payload, pos + 1)[0]
                            pos += 5
                            col.append(payload[pos:pos + length])
                            pos += length
                        elif k == 110:  # 'n'
                            col.append(None)
                            pos += 1
                        else:
                            self._unusual_insert(rel, state, payload, lsn)
                            break
                    else:
                        state.ops.append("c")
                        state.lsns.append(lsn)
                        state.events += 1
                        result.events += 1
                        batch = state.batch
                        batch.approx_bytes += len(payload)
                        if len(state.ops) >= max_rows or batch.approx_bytes >= max_bytes:
                            self._flush_state(state)
                else:
                    self._change(rel, pgoutput.decode_message(payload), msg.data_start)
            msg = read()
            if msg is None or msg.payload[0] != 73:
                return msg, n
        return msg, _PERIODIC_EVERY

    def _unusual_insert(self, rel: _Rel, state: _TableState, payload: bytes, lsn: int) -> None:
        """A value kind the fast path does not take (e.g. unchanged TOAST): undo the row's partial append and
        take the slow path."""
        n = len(state.ops)
        for col in state.cols:
            del col[n:]
        self._change(rel, pgoutput.decode_message(payload), lsn)

    # ---- the slow path: updates, deletes, replays, relations that differ from the spec

    def _change(self, rel: _Rel, message: Any, lsn: int) -> None:
        state = rel.state
        if state is None:
            return
        tx = self._tx
        if state.seen is not None:
            state.seen.update(rel.keys_of(message))
        events: tuple[Any, ...] = (message,)
        if isinstance(message, pgoutput.Update) and rel.key_changed(message):
            # Debezium's shape for a key change: a delete of the old key, then a create of the new one, both
            # at the update's LSN (two events, two indexes), so staging and history close the old key instead
            # of keeping it live.
            assert message.old is not None
            new, _reason = pgoutput.resolve_unchanged(message.new, message.old, message.old_kind, rel.names)
            events = (pgoutput.Delete(message.relid, message.old_kind or "K", message.old),
                      pgoutput.Insert(message.relid, new))  # an unresolved TOAST marker dead-letters it there
        replayed = False
        for event in events:
            position = LsnPosition(tx[0], lsn, state.index_in(tx))
            if state.replaying and state.plan.skip(position):
                state.skipped += 1
                state.tx = None  # the rows after it are a new run (their indexes do not follow the last row's)
                self.result.skipped_replayed += 1
                continue
            state.events += 1
            self.result.events += 1
            self._append(rel, state, event, position)
            if state.replaying:
                replayed = True
                self._replay_step(state, position)
        batch = state.batch
        if not replayed and (batch.rows >= self.flush.max_rows or batch.approx_bytes >= self.flush.max_bytes):
            self._flush_state(state)

    def _append(self, rel: _Rel, state: _TableState, message: Any, position: LsnPosition) -> None:
        """One row change into the table's batch, or into its dead letters with the reason."""
        tx = self._tx
        batch = state.batch
        op, values, reason = _row_of(rel, message)
        if reason is not None:
            batch.dead_letter(position, reason, self._event_for(rel, message, position.lsn), tx[2])
            state.tx = None  # not a row: the fast path's next row starts a new run
        else:
            batch.append_text_row(op, rel.in_spec_order(values), position, tx[1], tx[2])
            state.tx = tx

    def _replay_step(self, state: _TableState, position: LsnPosition) -> None:
        """While replaying: cut exactly at an orphan's last event; stop the run if that would not reproduce it."""
        orphan = state.plan.cut_due(position)  # strict: raises ReplayMismatch if the replay passed an orphan
        if orphan is not None:
            first = state.batch.first_position
            if first != orphan.first:
                raise ReplayMismatch(
                    f"replay of table {state.table.name} cannot reproduce the lake file {orphan.key}: the "
                    f"replayed events up to its last position ({show_position(orphan.last)}) start at "
                    f"({show_position(first)}), not at its first position ({show_position(orphan.first)}); "
                    "the stream stops here instead of writing them under another key (nothing after the "
                    "acknowledged position was acknowledged)")
            self._flush_state(state)
        state.replaying = state.plan.active

    def _event_for(self, rel: _Rel, message: Any, lsn: int) -> dict[str, Any]:
        """A Debezium-like rendering of a change that keeps raw text (for the dead-letter store)."""
        def image(values: list[Any] | None) -> dict[str, Any] | None:
            if values is None:
                return None
            return {n: (v.decode(errors="replace") if isinstance(v, bytes) else
                        ("__unchanged_toast__" if v is pgoutput.UNCHANGED else v))
                    for n, v in zip(rel.names, values, strict=False)}
        tx = self._tx
        return {"before": image(getattr(message, "old", None)), "after": image(getattr(message, "new", None)),
                "op": _OPS[type(message).__name__],
                "source": {"schema": rel.relation.namespace, "table": rel.relation.name, "lsn": lsn,
                           "txId": tx[1], "ts_us": tx[2], "commit_lsn": tx[0]}}

    # ---- backfills (bankflow.engines.builtin.backfill): watermarks in the stream, chunks into the lake

    def _start_backfills(self) -> None:
        """Plan the backfills (new, re-added, requested, interrupted tables) and start the worker."""
        records = plan(self.resolved, self.coverage, fresh_slot=self.fresh_slot, position=self._acked,
                       has_files=self._has_files)
        self.backfiller = Backfiller(self.resolved, self.connect_kwargs, lambda name: self._states[name].table)
        for record in records:
            self._queue_backfill(record)

    def _has_files(self, table: Table) -> bool:
        directory = self.writer.directory(table=table.name, schema=self.schema, topic=self.spec.topic_for(table))
        return bool(self.writer.fs.glob(f"{directory}/*.parquet"))

    def _queue_backfill(self, record: dict[str, Any]) -> None:
        """Hand a backfill to the worker, after settling a chunk an interrupted run left pending."""
        assert self.backfiller is not None
        if record["id"] in self.backfiller.queued or record["table"] not in self._states:
            return
        pending = record.get("pending")
        if pending is not None:
            table = self._states[record["table"]].table
            files: list[LakeFile] = self.writer.list_files(stream=backfill_stream(table), table=table.name,
                                                           schema=self.schema, topic=self.spec.topic_for(table))
            if pending["rows"] == 0 or any(f.first.commit == pending["position"] for f in files):
                record.update(after=pending["end"], chunks=pending["chunk"], rows=record["rows"] + pending["rows"])
            record["pending"] = None
            self.coverage.write(record["table"], record)
        log.info("backfill of %s (%s) from %s", record["table"], record["reason"],
                 "its first row" if record.get("after") is None else f"after key {record['after']}")
        self._backfills[record["id"]] = record
        self.backfiller.add(record)

    def _poll_requests(self, now: float) -> None:
        """Pick up `bankflow backfill` requests made while this run streams (every 2 s); raise a worker error."""
        backfiller = self.backfiller
        if backfiller is None:
            return
        if backfiller.error is not None:
            raise StageError(f"backfill failed: {backfiller.error}") from backfiller.error
        if now - self._last_poll < 2.0:
            return
        self._last_poll = now
        for table in self.spec.tables:
            record = self.coverage.read(table.name)
            if record is not None and record.get("state") == "backfilling" and record["id"] not in backfiller.queued:
                self._queue_backfill(record)

    def _on_message(self, payload: bytes, _lsn: int) -> None:
        message: pgoutput.LogicalMessage = pgoutput.decode_message(payload)
        if message.prefix != WATERMARK_PREFIX or self.backfiller is None or not message.transactional:
            return
        mark = parse_watermark(message.content)
        if mark is None or mark.get("run") != self.backfiller.run:
            return  # another pipeline's, or a crashed run's: its chunk is redone by this run
        key = (str(mark.get("backfill")), int(mark.get("chunk", 0)))
        record = self._backfills.get(key[0])
        if record is None:
            return
        state = self._states[record["table"]]
        if mark.get("mark") == "low":
            self._lows[key] = self._tx
            if state.seen is None:
                state.seen = set()
                for rel in self._rels.values():
                    if rel.state is state:
                        rel.fast = False
        elif mark.get("mark") == "high":
            chunk = self.backfiller.take(*key)
            low = self._lows.pop(key, None)
            if chunk is not None and low is not None:
                self._emit_chunk(record, state, chunk, low)
            elif chunk is not None:
                chunk.redo = True
                chunk.processed.set()

    def _emit_chunk(self, record: dict[str, Any], state: _TableState, chunk: Chunk, low: Any) -> None:
        """At a chunk's high watermark: its rows whose key the stream did not change since the backfill began,
        as op 'r' rows at the low watermark's commit LSN (see the backfill module), to the lake."""
        table = state.table
        batch = self._new_batch(table, backfill_stream(table))
        if chunk.names != list(batch.names):
            log.info("table %s changed shape during a backfill chunk: reading it again", table.name)
            chunk.redo = True
            chunk.processed.set()
            return
        seen = state.seen or set()
        keep = [i for i, key in enumerate(chunk.keys) if key not in seen]
        gone = [key for key in chunk.gone if key not in seen]  # deleted while the stream did not cover the table
        commit, xid, ts_us = low
        if keep or gone:
            batch.begin_text_tx(commit, xid, ts_us, 0, lsn_override=commit)
            cols, ops, lsns = batch.text_sink()
            at = {name: i for i, name in enumerate(table.primary_key)}
            for name, col, values in zip(batch.names, cols, chunk.columns, strict=True):
                col.extend([values[i] for i in keep] if len(keep) < chunk.rows else values)
                batch.approx_bytes += sum(len(v) for v in col[-len(keep):] if v is not None) if keep else 0
                key = at.get(name)  # a delete carries the key, nothing else
                col.extend([k[key] for k in gone] if key is not None else [None] * len(gone))
            ops.extend(["r"] * len(keep) + ["d"] * len(gone))
            lsns.extend(range(len(keep) + len(gone)))
        if record.get("first_lsn") is None:
            record["first_lsn"] = commit
        record["pending"] = {"position": commit, "chunk": chunk.number, "end": chunk.end,
                             "rows": len(keep) + len(gone)}
        self.coverage.write(table.name, record)  # before the file: a restart knows what to look for
        self.result.backfill_rows += len(keep)
        if chunk.last:
            state.seen = None
            for rel in self._rels.values():
                if rel.state is state:
                    rel.fast = rel.matches
            del self._backfills[record["id"]]
            self.result.backfills.append(table.name)
        self._inflight.append((commit, self._pool.submit(self._write_chunk, record, batch, chunk)))
        self._reap(block=len(self._inflight) > _MAX_INFLIGHT)

    def _write_chunk(self, record: dict[str, Any], batch: TableBatch, chunk: Chunk) -> WrittenFile:
        """The writer thread: the chunk's file, then its progress in the marker; then the worker goes on."""
        try:
            written = self.writer.write_batch(batch) if not batch.empty else WrittenFile(None, 0, 0, 0)
            pending = record["pending"]
            record.update(after=chunk.end, chunks=chunk.number, rows=record["rows"] + pending["rows"], pending=None)
            name = record["table"]
            if chunk.last:
                previous = record.get("previous") or {}
                done = covered(name, previous.get("since_lsn", record["first_lsn"]),
                               previous.get("how", "backfill") if previous else "backfill")
                done["backfill"] = {k: record[k] for k in ("id", "reason", "where", "chunks", "rows", "first_lsn")}
                self.coverage.write(name, done)
                log.info("backfill of %s complete: %d rows in %d chunks", name, record["rows"], record["chunks"])
            else:
                self.coverage.write(name, record)
            return written
        finally:
            chunk.processed.set()

    # ---- flushing and acknowledging

    def _flush_state(self, state: _TableState) -> None:
        """Hand the batch to the writer thread and start a new one.

        Conversion and Parquet encoding overlap with decoding; a written file counts (for acknowledging and
        in the result) only once the writer has finished it, and files are reaped in submission order.
        """
        batch = state.batch
        if batch.empty:
            return
        state.batch = self._new_batch(state.table, batch.stream)
        state.refresh()
        first_commit = batch.first_position.commit  # before the writer thread clears the batch
        self._inflight.append((first_commit, self._pool.submit(self.writer.write_batch, batch)))
        self._reap(block=len(self._inflight) > _MAX_INFLIGHT)

    def _reap(self, block: bool = False, wait_all: bool = False) -> None:
        """Collect finished writes (oldest first); a failed write raises here, before anything is acked."""
        inflight = self._inflight
        reaped = False
        while inflight and (inflight[0][1].done() or block or wait_all):
            _commit, future = inflight.popleft()
            written: WrittenFile = future.result()
            if written.key:
                self.result.files.append(written.key)
            self.result.dead_letters += written.dead_letters
            reaped = True
            block = False
        if reaped:
            self._update_ack(force=True)
            self._report()

    def _update_ack(self, force: bool = False) -> None:
        """Acknowledge the end of the last transaction before the first one with events not yet durable."""
        pending = [s.batch.first_position.commit for s in self._states.values() if not s.batch.empty]
        pending += [commit for commit, _future in self._inflight]
        limit = min(pending) if pending else None
        done = self._done
        while done and (limit is None or done[0][0] < limit):
            self._ack_target = done.popleft()[1]
        now = time.monotonic()
        if self._ack_target > self._acked and (force or now - self._last_ack_time >= _ACK_INTERVAL):
            self._cursor.send_feedback(write_lsn=self._ack_target, flush_lsn=self._ack_target, force=True)
            self._acked = self._ack_target
            self._last_ack_time = now
            if not force:
                self._report()  # an idle acknowledgement moves the durable position too (a forced one reports)

    def _ack_idle(self) -> None:
        """Nothing buffered and no transaction open: everything the server sent is durable, ack its position.

        Without this a slot whose tables see no changes never advances and holds WAL of other tables forever.
        """
        if self._in_tx or self._inflight or any(not s.batch.empty for s in self._states.values()):
            return
        wal_end = self._cursor.wal_end or 0
        if self._done:
            self._ack_target = max(self._ack_target, self._done[-1][1])
            self._done.clear()
        if wal_end > self._ack_target:
            self._ack_target = wal_end

    def _periodic(self, now: float) -> None:
        self._poll_requests(now)
        self._reap()
        # When one table's batch is due, every table's is flushed with it: the files of all tables then end at
        # the same point of the stream, so a consistent cut across tables (bankflow.runner.consistent_files)
        # finds whole transactions below it instead of files of different tables straddling each other.
        ready = [s for s in self._states.values() if not s.replaying and not s.batch.empty]
        if any(state.batch.should_flush(self.flush) for state in ready):
            for state in ready:
                self._flush_state(state)
        self._update_ack()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress({"events": self.result.events, "files": len(self.result.files),
                           "dead_letters": self.result.dead_letters, "acked_lsn": lsn_text(self._acked)})

    def _finish(self) -> None:
        for state in self._states.values():
            if state.plan.cuts:
                # its batch is a part of an orphan: written now it would be a file overlapping that orphan;
                # unwritten, it stays unacknowledged and the next run replays it
                log.warning("table %s: %d orphan file(s) were not reached by the replay: the next run replays "
                            "them", state.table.name, len(state.plan.cuts))
                continue
            self._flush_state(state)
        self._reap(wait_all=True)
        self._ack_idle()
        self._update_ack(force=True)
        self.result.confirmed_lsn = lsn_text(self._acked)
        self._wait_confirmed(self._acked)

    def _wait_confirmed(self, lsn: int, timeout: float = 5.0) -> None:
        """Make sure the server has recorded our last acknowledgement before we disconnect."""
        conn = connect(self.connect_kwargs)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                row = slot_row(conn, self.spec.cdc.slot)
                if row is None or (row.confirmed_flush_lsn or 0) >= lsn:
                    return
                self._cursor.send_feedback(write_lsn=lsn, flush_lsn=lsn, force=True)
                time.sleep(0.02)
            log.warning("the server did not confirm LSN %s in %.0f s", lsn_text(lsn), timeout)
        finally:
            conn.close()

    # ---- the main loop

    def run(self, *, follow: bool = False, stop: threading.Event | None = None) -> CdcRunResult:
        """Stream into the lake until caught up (or, with `follow`, until `stop` is set)."""
        t0 = time.monotonic()
        rconn, cur, target = self._start()
        self._follow, self._target = follow, target
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bankflow-lake-writer")
        try:
            self._start_backfills()
            with large_young_generation():
                self._loop(rconn, cur, stop)
                self._finish()
        finally:
            if self.backfiller is not None:
                self.backfiller.close()
            self._pool.shutdown(wait=True)
            rconn.close()
            self.shapes.catalog.close()
        self.result.schema_changes = list(self.shapes.accepted)
        if self._stopped is not None:
            raise StageError(self._stopped)
        self.result.events_by_table = {name: s.events for name, s in self._states.items()}
        self.result.seconds = time.monotonic() - t0
        return self.result

    def _caught_up(self) -> bool:
        if self._in_tx or self._backfills:
            return False
        return max(self._last_end, self._cursor.wal_end or 0) >= self._target

    def _idle(self, rconn: Any, cur: Any, stop: threading.Event | None) -> bool:
        """Nothing to read: flush by time, ack, ask for the server's position, wait. True to end the run."""
        now = time.monotonic()
        if stop is not None and stop.is_set():
            return True
        self._periodic(now)
        if not self._follow and self._caught_up():
            return True
        if not self._in_tx:
            self._ack_idle()
            self._update_ack()
            if not self._follow and now - self._last_keepalive_request > _IDLE_WAIT:
                cur.send_feedback(reply=True)  # the keepalive answer carries the server's position
                self._last_keepalive_request = now
        select.select([rconn], [], [], _IDLE_WAIT)
        return False

    def _loop(self, rconn: Any, cur: Any, stop: threading.Event | None) -> None:
        read = cur.read_message
        inserts = self._inserts
        handlers = self._handlers()
        count = 0
        msg = read()
        while True:
            if msg is None:
                if self._idle(rconn, cur, stop):
                    return
                msg = read()
                continue
            if count >= _PERIODIC_EVERY:
                count = 0
                if stop is not None and stop.is_set() and not self._in_tx:
                    return
                self._periodic(time.monotonic())
            payload = msg.payload
            kind = payload[0]
            if kind == 73:  # 'I'
                msg, n = inserts(msg, read)
                count += n
                continue
            count += 1
            handler = handlers.get(kind)
            if handler is not None and handler(payload, msg.data_start):
                return
            msg = read()
