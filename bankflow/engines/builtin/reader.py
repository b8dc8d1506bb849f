"""The built-in CDC engine of the `local` environment: Postgres logical replication (pgoutput) → lake.

The replication slot is the durable log. Events are decoded straight into per-table column batches
(`bankflow.lake.batch.TableBatch`, text fast path), flushed to Parquet by the spec's flush policy, and the slot
is acknowledged (``send_feedback(flush_lsn=…)``) only up to the end of the last transaction whose events are
all durable in the lake. A crash loses nothing (unacknowledged transactions are sent again) and duplicates
nothing: file keys come from source positions and a replay reproduces the crashed run's files exactly
(`bankflow.lake.replay`).

Positions are `LsnPosition(commit LSN, change LSN)`: pgoutput sends whole transactions in commit order, so
the commit LSN orders the stream and the change LSN orders events inside a transaction.

Modes: catch-up (default) reads `pg_current_wal_lsn()` at start and returns once every transaction committed
up to it is received and flushed; follow runs until `stop` is set, flushing by rows/bytes/seconds.

TRUNCATE is not a row change, so it cannot become rows of the table's change log. It is recorded (with a
warning) as a record in ``<dead_letter>/_truncates/`` keyed by its position, so it is visible and nothing is
silently lost; downstream models decide what a truncate means.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from bankflow.engines.builtin import pgoutput
from bankflow.engines.builtin.events import to_debezium_event
from bankflow.lake.batch import DeadLetter, TableBatch
from bankflow.lake.filesystem import lake_filesystem
from bankflow.lake.gctune import large_young_generation
from bankflow.lake.positions import LsnPosition, lsn_text, parse_lsn
from bankflow.lake.replay import ReplayPlan, lsn_resume
from bankflow.lake.writer import LakeWriter, WrittenFile, put_atomic
from bankflow.render.sql import quote_pg
from bankflow.spec.loader import ResolvedSpec
from bankflow.spec.models import Table

log = logging.getLogger(__name__)

SESSION_OPTIONS = ("-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 "
                   "-c bytea_output=hex")
SNAPSHOT_STREAM_SUFFIX = "-snapshot"
MARKER_DIR = "_bankflow"
_IDLE_WAIT = 0.2  # seconds to wait for the server when nothing is buffered
_ACK_INTERVAL = 0.5  # acknowledge completed transactions at least this often when no flush does it
_PERIODIC_EVERY = 4096  # messages between clock checks on a busy stream
_MAX_INFLIGHT = 2  # batches being written in the background before the reader waits (bounds memory)


class CdcError(RuntimeError):
    """The source is not set up for CDC (no publication, slot in use, wrong plugin, …)."""


@dataclass
class CdcRunResult:
    events: int = 0
    events_by_table: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    dead_letters: int = 0
    truncates: int = 0
    snapshot_rows: int = 0
    skipped_replayed: int = 0
    start_lsn: str | None = None
    end_lsn: str | None = None  # catch-up target (pg_current_wal_lsn() at start)
    confirmed_lsn: str | None = None
    seconds: float = 0.0


@dataclass
class SlotInfo:
    name: str
    created: bool
    confirmed_flush_lsn: int | None = None
    consistent_lsn: int | None = None
    snapshot_rows: int = 0
    snapshot_files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- connections


def _with_options(connect_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pin the session settings that decide the text form of values (timestamptz in UTC, ISO dates, …)."""
    kwargs = dict(connect_kwargs)
    kwargs["options"] = (kwargs.get("options", "") + " " + SESSION_OPTIONS).strip()
    return kwargs


def _connect(connect_kwargs: dict[str, Any]) -> Any:
    import psycopg2

    conn = psycopg2.connect(**_with_options(connect_kwargs))
    conn.autocommit = True
    return conn


def _replication_connect(connect_kwargs: dict[str, Any]) -> Any:
    import psycopg2
    import psycopg2.extras

    return psycopg2.connect(connection_factory=psycopg2.extras.LogicalReplicationConnection,
                            **_with_options(connect_kwargs))


def _slot_row(conn: Any, slot: str) -> tuple[Any, ...] | None:
    with conn.cursor() as cur:
        cur.execute("SELECT plugin, confirmed_flush_lsn::text, active_pid, database FROM pg_replication_slots "
                    "WHERE slot_name = %s", (slot,))
        row: tuple[Any, ...] | None = cur.fetchone()
        return row


def catalog_primary_keys(conn: Any, schema: str, tables: list[str]) -> dict[str, list[str]]:
    """Primary keys from pg_index: Relation messages cannot tell them (REPLICA IDENTITY FULL flags all)."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT c.relname, a.attname FROM pg_index i
               JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
               WHERE i.indisprimary AND n.nspname = %s AND c.relname = ANY(%s) ORDER BY c.relname, k.ord""",
            (schema, tables))
        keys: dict[str, list[str]] = {}
        for table, column in cur.fetchall():
            keys.setdefault(table, []).append(column)
        return keys


# ---------------------------------------------------------------- slot + snapshot


class _Markers:
    """Snapshot progress markers in the lake, next to the data they describe."""

    def __init__(self, fs: Any, root: str, slot: str) -> None:
        self.fs = fs
        self.started = f"{root}/{MARKER_DIR}/snapshot-{slot}.started.json"
        self.complete = f"{root}/{MARKER_DIR}/snapshot-{slot}.json"

    def read(self, path: str) -> dict[str, Any] | None:
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as handle:
            data: dict[str, Any] = orjson.loads(handle.read())
            return data

    def write(self, path: str, data: dict[str, Any]) -> None:
        put_atomic(self.fs, path, orjson.dumps(data, option=orjson.OPT_INDENT_2))

    def remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path)


def _wants_snapshot(resolved: ResolvedSpec) -> bool:
    return resolved.spec.cdc.snapshot_mode in ("initial", "always", "when_needed", "initial_only")


def _stream_batch(resolved: ResolvedSpec, table: Table, stream: str) -> TableBatch:
    spec = resolved.spec
    return TableBatch(table, stream=stream, schema=spec.source.schema_name, topic=spec.topic_for(table))


def _remove_snapshot_files(resolved: ResolvedSpec, writer: LakeWriter, consistent_lsn: int) -> int:
    """Delete the files of an interrupted snapshot (they all carry its consistent point)."""
    spec = resolved.spec
    removed = 0
    for table in spec.tables:
        stream = table.name + SNAPSHOT_STREAM_SUFFIX
        for f in writer.list_files(stream=stream, table=table.name, schema=spec.source.schema_name,
                                   topic=spec.topic_for(table)):
            if f.first.commit == consistent_lsn:
                writer.delete(f.key)
                removed += 1
    return removed


def ensure_slot(resolved: ResolvedSpec, connect_kwargs: dict[str, Any]) -> SlotInfo:
    """Create the pgoutput slot if missing; on creation take the initial snapshot (snapshot_mode initial).

    The snapshot reads every spec table inside the snapshot the slot exported at its consistent point, so
    snapshot rows (op 'r', `_lsn` = consistent point) and the stream that follows neither overlap nor miss a
    change. A crash mid-snapshot is recoverable: a "started" marker records the consistent point before any
    file is written and a "complete" marker is written last; a slot without the complete marker is dropped,
    the partial snapshot files are deleted and everything is redone.
    """
    spec = resolved.spec
    slot = spec.cdc.slot
    fs, root = lake_filesystem(resolved)
    writer = LakeWriter(fs, root, spec.lake)
    markers = _Markers(fs, root, slot)
    conn = _connect(connect_kwargs)
    try:
        row = _slot_row(conn, slot)
        if row is not None:
            plugin, confirmed, _active_pid, _database = row
            if plugin != "pgoutput":
                raise CdcError(f"replication slot {slot!r} uses plugin {plugin!r}, not pgoutput; drop it or "
                               "choose another cdc.slot")
            if not _wants_snapshot(resolved) or markers.read(markers.complete) is not None:
                return SlotInfo(slot, False, parse_lsn(confirmed) if confirmed else None)
            log.warning("slot %s exists but its initial snapshot never completed: redoing it", slot)
            _drop(conn, slot)
        started = markers.read(markers.started)
        if started is not None:
            removed = _remove_snapshot_files(resolved, writer, int(started["consistent_lsn"]))
            log.warning("removed %d files of an interrupted snapshot", removed)
            markers.remove(markers.started)
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (spec.cdc.publication,))
            if cur.fetchone() is None:
                raise CdcError(f"publication {spec.cdc.publication!r} does not exist; the source stage creates "
                               f"it (CREATE PUBLICATION {spec.cdc.publication} FOR TABLE …)")
        rconn = _replication_connect(connect_kwargs)
        try:
            rcur = rconn.cursor()
            mode = "EXPORT_SNAPSHOT" if _wants_snapshot(resolved) else "NOEXPORT_SNAPSHOT"
            rcur.execute(f"CREATE_REPLICATION_SLOT {quote_pg(slot)} LOGICAL pgoutput {mode}")
            _name, consistent_point, snapshot_name, _plugin = rcur.fetchone()
            consistent = parse_lsn(consistent_point)
            info = SlotInfo(slot, True, consistent, consistent)
            if mode == "EXPORT_SNAPSHOT":
                markers.write(markers.started, {"slot": slot, "consistent_lsn": consistent})
                info.snapshot_rows, info.snapshot_files = _snapshot(resolved, connect_kwargs, writer,
                                                                    snapshot_name, consistent)
                markers.write(markers.complete, {
                    "slot": slot, "consistent_lsn": consistent, "consistent_lsn_text": lsn_text(consistent),
                    "rows": info.snapshot_rows, "files": info.snapshot_files})
                markers.remove(markers.started)
            return info
        finally:
            rconn.close()
    finally:
        conn.close()


def _snapshot(resolved: ResolvedSpec, connect_kwargs: dict[str, Any], writer: LakeWriter, snapshot_name: str,
              consistent: int) -> tuple[int, list[str]]:
    """COPY every spec table inside the exported snapshot into op 'r' files at the consistent point."""
    import psycopg2
    import pyarrow.csv as pacsv

    spec = resolved.spec
    schema = spec.source.schema_name
    flush = spec.lake.flush
    conn = psycopg2.connect(**_with_options(connect_kwargs))
    files: list[str] = []
    total = 0
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
            cur.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, "
                        "(extract(epoch FROM now()) * 1000000)::bigint")
            xid, ts_us = cur.fetchone()
            tmp_dir = resolved.state_dir / "tmp"
            tmp_dir.mkdir(parents=True, exist_ok=True)
            for table in spec.tables:
                names = [c.name for c in table.columns]
                columns = ", ".join(quote_pg(n) for n in names)
                batch = _stream_batch(resolved, table, table.name + SNAPSHOT_STREAM_SUFFIX)
                fd, path = tempfile.mkstemp(prefix=f"snapshot-{table.name}-", suffix=".csv", dir=tmp_dir)
                try:
                    with os.fdopen(fd, "wb") as out:
                        cur.copy_expert(f"COPY (SELECT {columns} FROM {quote_pg(schema)}."
                                        f"{quote_pg(table.name)}) TO STDOUT WITH (FORMAT csv)", out)
                    if os.path.getsize(path) == 0:
                        continue
                    reader = pacsv.open_csv(
                        path,
                        read_options=pacsv.ReadOptions(column_names=names, block_size=8 << 20),
                        parse_options=pacsv.ParseOptions(newlines_in_values=True),
                        convert_options=pacsv.ConvertOptions(
                            column_types={n: "string" for n in names}, strings_can_be_null=True,
                            quoted_strings_can_be_null=False, null_values=[""]),
                    )
                    row_no = 0
                    for record_batch in reader:
                        n = record_batch.num_rows
                        start = 0
                        while start < n:
                            room = max(1, flush.max_rows - batch.rows)
                            piece = record_batch.slice(start, room)
                            cols, ops, lsns = batch.text_sink()
                            batch.begin_text_tx(consistent, xid, ts_us, row_no, lsn_override=consistent)
                            for col, arr in zip(cols, piece.columns, strict=True):
                                col.extend(arr.to_pylist())
                            ops.extend(["r"] * piece.num_rows)
                            lsns.extend(range(row_no, row_no + piece.num_rows))
                            batch.approx_bytes += piece.nbytes
                            row_no += piece.num_rows
                            start += piece.num_rows
                            if batch.should_flush(flush):
                                files += _write(writer, batch)
                    total += row_no
                    if not batch.empty:
                        files += _write(writer, batch)
                finally:
                    os.unlink(path)
        conn.rollback()
    finally:
        conn.close()
    return total, files


def _write(writer: LakeWriter, batch: TableBatch) -> list[str]:
    written = writer.write_batch(batch)
    return [written.key] if written.key else []


def _drop(conn: Any, slot: str, timeout: float = 10.0) -> None:
    """Drop a slot, waiting for (then terminating) a walsender that still holds it."""
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            return
        except psycopg2.errors.ObjectInUse:
            if time.monotonic() > deadline:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                                "WHERE slot_name = %s AND active_pid IS NOT NULL", (slot,))
                deadline = time.monotonic() + timeout
            time.sleep(0.1)
        except psycopg2.errors.UndefinedObject:
            return


def drop_slot(resolved: ResolvedSpec, connect_kwargs: dict[str, Any], *, forget_snapshot: bool = True) -> bool:
    """Drop the spec's slot (idle slots hold WAL forever). True if it existed.

    With `forget_snapshot`, the snapshot markers go too, so a new slot takes a new initial snapshot (the old
    snapshot files stay: they are history, and the new ones carry a different consistent point in their keys).
    """
    slot = resolved.spec.cdc.slot
    conn = _connect(connect_kwargs)
    try:
        existed = _slot_row(conn, slot) is not None
        if existed:
            _drop(conn, slot)
    finally:
        conn.close()
    if forget_snapshot:
        fs, root = lake_filesystem(resolved)
        markers = _Markers(fs, root, slot)
        markers.remove(markers.complete)
        markers.remove(markers.started)
    return existed


# ---------------------------------------------------------------- streaming


class _TableState:
    __slots__ = ("batch", "cols", "events", "lsns", "ops", "plan", "replaying", "table", "tx")

    def __init__(self, table: Table, batch: TableBatch, plan: ReplayPlan) -> None:
        self.table = table
        self.batch = batch
        self.plan = plan
        self.replaying = plan.active
        self.tx: Any = None
        self.events = 0
        self.cols, self.ops, self.lsns = batch.text_sink()

    def refresh(self) -> None:
        self.tx = None
        self.cols, self.ops, self.lsns = self.batch.text_sink()


class _Rel:
    """A relation as the server announced it, bound to the spec table it feeds (or None: not in the spec)."""

    __slots__ = ("fast", "mapping", "names", "relation", "state", "unknown")

    def __init__(self, relation: pgoutput.Relation, state: _TableState | None) -> None:
        self.relation = relation
        self.state = state
        self.names = relation.column_names
        self.fast = False
        self.mapping: list[int | None] = []
        self.unknown: list[str] = []
        if state is not None:
            spec_names = state.batch.names
            self.fast = tuple(spec_names) == self.names
            index = {n: i for i, n in enumerate(spec_names)}
            self.mapping = [index.get(n) for n in self.names]
            self.unknown = [n for n in self.names if n not in index]


class BuiltinReader:
    """Reads the slot. `run()` writes the lake (fast path); `iter_events()` yields Debezium-shaped events."""

    def __init__(self, resolved: ResolvedSpec, connect_kwargs: dict[str, Any], *,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.resolved = resolved
        self.spec = resolved.spec
        self.connect_kwargs = connect_kwargs
        self.progress = progress
        self.fs, self.root = lake_filesystem(resolved)
        self.writer = LakeWriter(self.fs, self.root, self.spec.lake)
        self.schema = self.spec.source.schema_name
        self.tables = {t.name: t for t in self.spec.tables}
        self.flush = self.spec.lake.flush
        self.result = CdcRunResult(events_by_table={t.name: 0 for t in self.spec.tables})
        self.primary_keys: dict[str, list[str]] = {}
        self._rels: dict[int, _Rel] = {}
        self._states: dict[str, _TableState] = {}
        self._done: deque[tuple[int, int]] = deque()  # (commit lsn, end lsn) of received transactions
        self._acked = 0
        self._ack_target = 0
        self._last_ack_time = 0.0
        self._last_end = 0
        self._in_tx = False
        self._tx: Any = None
        self._prev_commit: int | None = None
        self._cursor: Any = None
        self._pool: Any = None
        self._inflight: deque[tuple[int, Any]] = deque()  # (first commit LSN, future) of batches being written

    # ---- setup

    def _prepare(self, conn: Any) -> int:
        """Read the catch-up target, the slot's confirmed position and the replay plans; return the target."""
        spec = self.spec
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn()::text")
            target = parse_lsn(cur.fetchone()[0])
        row = _slot_row(conn, spec.cdc.slot)
        deadline = time.monotonic() + 15
        while row is not None and row[2] is not None and time.monotonic() < deadline:
            time.sleep(0.1)  # a killed predecessor's walsender notices the closed socket soon
            row = _slot_row(conn, spec.cdc.slot)
        if row is None:
            raise CdcError(f"replication slot {spec.cdc.slot!r} does not exist (ensure_slot creates it)")
        if row[2] is not None:
            raise CdcError(f"replication slot {spec.cdc.slot!r} is in use by process {row[2]}; is another "
                           "bankflow cdc running?")
        confirmed = parse_lsn(row[1]) if row[1] else 0
        self._acked = self._ack_target = confirmed
        self.result.start_lsn = lsn_text(confirmed)
        self.result.end_lsn = lsn_text(target)
        self.primary_keys = catalog_primary_keys(conn, self.schema, list(self.tables))
        for table in spec.tables:
            catalog = self.primary_keys.get(table.name)
            if catalog is not None and catalog != list(table.primary_key):
                log.warning("table %s: primary key in the catalog %s differs from the spec %s", table.name,
                            catalog, table.primary_key)
            batch = _stream_batch(self.resolved, table, table.name)
            files = self.writer.list_batches(stream=table.name, table=table.name, schema=self.schema,
                                             topic=spec.topic_for(table))
            plan = ReplayPlan.resume(files, lsn_resume(confirmed))
            if plan.active:
                log.warning("table %s: replaying after an interrupted run: %s", table.name, plan.describe())
            self._states[table.name] = _TableState(table, batch, plan)
        return target

    def _start(self) -> tuple[Any, Any, int]:
        conn = _connect(self.connect_kwargs)
        try:
            target = self._prepare(conn)
        finally:
            conn.close()
        rconn = _replication_connect(self.connect_kwargs)
        cur = rconn.cursor()
        cur.start_replication(slot_name=self.spec.cdc.slot, decode=False, status_interval=10,
                              options={"proto_version": "1", "publication_names": self.spec.cdc.publication})
        self._cursor = cur
        return rconn, cur, target

    # ---- relation / transaction messages

    def _on_relation(self, relation: pgoutput.Relation) -> None:
        state = self._states.get(relation.name) if relation.namespace == self.schema else None
        rel = _Rel(relation, state)
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

    # ---- the slow path: updates, deletes, replays, relations that differ from the spec

    def _change(self, rel: _Rel, message: Any, lsn: int) -> None:
        state = rel.state
        if state is None:
            return
        tx = self._tx
        position = LsnPosition(tx[0], lsn)
        plan = state.plan
        if state.replaying and plan.skip(position):
            self.result.skipped_replayed += 1
            return
        if isinstance(message, pgoutput.Insert):
            op, values, old_kind, old = "c", message.new, None, None
        elif isinstance(message, pgoutput.Update):
            op, values, old_kind, old = "u", message.new, message.old_kind, message.old
        else:
            op, values, old_kind, old = "d", message.old, message.old_kind, message.old
        state.events += 1
        self.result.events += 1
        batch = state.batch
        reason = None
        if op == "u":
            values, reason = pgoutput.resolve_unchanged(values, old, old_kind, rel.names)
        if reason is None and rel.unknown:
            reason = f"unknown column(s) {rel.unknown} for table {state.table.name!r}"
        if reason is not None:
            event = self._event_for(rel, message, lsn)
            batch.dead_letter(position, reason, event, tx[2])
        else:
            if not rel.fast:
                row: list[Any] = [None] * len(batch.names)
                for i, value in zip(rel.mapping, values, strict=True):
                    if i is not None:
                        row[i] = value
                values = row
            batch.append_text_row(op, values, position, tx[1], tx[2])
            state.tx = tx
        if state.replaying:
            self._replay_step(state, position)
        elif batch.rows >= self.flush.max_rows or batch.approx_bytes >= self.flush.max_bytes:
            self._flush_state(state)

    def _replay_step(self, state: _TableState, position: LsnPosition) -> None:
        orphan = state.plan.cut_due(position)
        if orphan is not None:
            first = state.batch.first_position
            if first != orphan.first:
                log.warning("replay of %s did not reproduce %s (starts at %s here): the lake may hold "
                            "duplicates of these events", state.table.name, orphan.key, first)
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
        before = getattr(message, "old", None)
        after = getattr(message, "new", None)
        op = {"Insert": "c", "Update": "u", "Delete": "d"}[type(message).__name__]
        return {"before": image(before), "after": image(after), "op": op,
                "source": {"schema": rel.relation.namespace, "table": rel.relation.name, "lsn": lsn,
                           "txId": tx[1], "ts_us": tx[2], "commit_lsn": tx[0]}}

    def _on_truncate(self, message: pgoutput.Truncate, lsn: int) -> None:
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

    # ---- flushing and acknowledging

    def _flush_state(self, state: _TableState) -> None:
        """Hand the batch to the writer thread and start a new one.

        Conversion and Parquet encoding overlap with decoding; a written file counts (for acknowledging and
        in the result) only once the writer has finished it, and files are reaped in submission order.
        """
        batch = state.batch
        if batch.empty:
            return
        state.batch = _stream_batch(self.resolved, state.table, batch.stream)
        state.refresh()
        future = self._pool.submit(self.writer.write_batch, batch)
        self._inflight.append((batch.first_position.commit, future))
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
        self._reap()
        for state in self._states.values():
            if not state.replaying and not state.batch.empty and state.batch.should_flush(self.flush):
                self._flush_state(state)
        self._update_ack()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress({"events": self.result.events, "files": len(self.result.files),
                           "dead_letters": self.result.dead_letters, "acked_lsn": lsn_text(self._acked)})

    def _finish(self, conn: Any) -> None:
        for state in self._states.values():
            if state.plan.cuts:
                log.warning("table %s: %d orphan file(s) were not reached by the replay", state.table.name,
                            len(state.plan.cuts))
            self._flush_state(state)
        self._reap(wait_all=True)
        self._ack_idle()
        self._update_ack(force=True)
        self.result.confirmed_lsn = lsn_text(self._acked)
        self._wait_confirmed(self._acked)

    def _wait_confirmed(self, lsn: int, timeout: float = 5.0) -> None:
        """Make sure the server has recorded our last acknowledgement before we disconnect."""
        conn = _connect(self.connect_kwargs)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                row = _slot_row(conn, self.spec.cdc.slot)
                if row is None or (row[1] and parse_lsn(row[1]) >= lsn):
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
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bankflow-lake-writer")
        try:
            with large_young_generation():
                self._loop(rconn, cur, target, follow, stop)
                self._finish(rconn)
        finally:
            self._pool.shutdown(wait=True)
            rconn.close()
        self.result.events_by_table = {name: s.events for name, s in self._states.items()}
        self.result.seconds = time.monotonic() - t0
        return self.result

    def _caught_up(self, target: int) -> bool:
        if self._in_tx:
            return False
        return max(self._last_end, self._cursor.wal_end or 0) >= target

    def _loop(self, rconn: Any, cur: Any, target: int, follow: bool, stop: threading.Event | None) -> None:
        read = cur.read_message
        rels = self._rels
        unpack_relid = struct.Struct(">I").unpack_from
        unpack_len = struct.Struct(">i").unpack_from
        decode = pgoutput.decode_message
        max_rows = self.flush.max_rows
        max_bytes = self.flush.max_bytes
        result = self.result
        tx: Any = None
        count = 0
        last_keepalive_request = 0.0
        while True:
            msg = read()
            if msg is None:
                now = time.monotonic()
                if stop is not None and stop.is_set():
                    return
                self._periodic(now)
                if not follow and self._caught_up(target):
                    return
                if not self._in_tx:
                    self._ack_idle()
                    self._update_ack()
                    if not follow and now - last_keepalive_request > _IDLE_WAIT:
                        cur.send_feedback(reply=True)  # the keepalive answer carries the server's position
                        last_keepalive_request = now
                select.select([rconn], [], [], _IDLE_WAIT)
                continue
            count += 1
            if count >= _PERIODIC_EVERY:
                count = 0
                if stop is not None and stop.is_set() and not self._in_tx:
                    return
                self._periodic(time.monotonic())
            payload = msg.payload
            kind = payload[0]
            if kind == 73:  # 'I' — the hot path
                rel = rels.get(unpack_relid(payload, 1)[0])
                state = rel.state if rel is not None else None
                if state is None:
                    continue
                if rel.fast and not state.replaying:  # type: ignore[union-attr]
                    lsn = msg.data_start
                    if state.tx is not tx:
                        state.batch.begin_text_tx(tx[0], tx[1], tx[2], lsn)
                        state.tx = tx
                    pos = 8
                    cols = state.cols
                    for col in cols:
                        k = payload[pos]
                        if k == 116:
                            length = unpack_len(payload, pos + 1)[0]
                            pos += 5
                            col.append(payload[pos:pos + length])
                            pos += length
                        elif k == 110:
                            col.append(None)
                            pos += 1
                        else:
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
                        continue
                    # an unexpected value kind: undo this row's partial append and take the slow path
                    n = len(state.ops)
                    for col in cols:
                        del col[n:]
                self._change(rel, decode(payload), msg.data_start)  # type: ignore[arg-type]
            elif kind == 66:  # 'B'
                begin = decode(payload)
                tx = (begin.final_lsn, begin.xid, begin.commit_ts_us)
                self._tx = tx
                self._in_tx = True
            elif kind == 67:  # 'C'
                commit = decode(payload)
                self._done.append((commit.commit_lsn, commit.end_lsn))
                self._last_end = commit.end_lsn
                self._prev_commit = commit.commit_lsn
                self._in_tx = False
                if not follow and commit.end_lsn >= target:
                    return
            elif kind in (85, 68):  # 'U', 'D'
                rel = rels.get(unpack_relid(payload, 1)[0])
                if rel is not None and rel.state is not None:
                    self._change(rel, decode(payload), msg.data_start)
            elif kind == 82:  # 'R'
                self._on_relation(decode(payload))
            elif kind == 84:  # 'T'
                self._on_truncate(decode(payload), msg.data_start)
            # 'Y' type, 'O' origin, 'M' message: nothing to record

    # ---- Debezium-shaped events

    def iter_events(self, *, follow: bool = False, stop: threading.Event | None = None
                    ) -> Iterator[tuple[dict[str, Any], LsnPosition]]:
        """Yield (Debezium 3.6 change event, position) for every change; writes nothing, acks nothing.

        The caller acknowledges with `ack(commit_end_lsn)` once what it did with the events is durable; the
        catch-up/follow semantics are those of `run`. Snapshot rows are not produced here (see `ensure_slot`).
        """
        rconn, cur, target = self._start()
        cdc = self.spec.cdc
        database = self.connect_kwargs.get("dbname") or self.spec.source.database
        try:
            while True:
                msg = cur.read_message()
                if msg is None:
                    if stop is not None and stop.is_set():
                        return
                    if not follow and self._caught_up(target):
                        return
                    cur.send_feedback(reply=True)
                    select.select([rconn], [], [], _IDLE_WAIT)
                    continue
                message = pgoutput.decode_message(msg.payload)
                if isinstance(message, pgoutput.Begin):
                    self._tx = (message.final_lsn, message.xid, message.commit_ts_us)
                    self._in_tx = True
                elif isinstance(message, pgoutput.Commit):
                    self._last_end = message.end_lsn
                    self._prev_commit = message.commit_lsn
                    self._in_tx = False
                    if not follow and message.end_lsn >= target:
                        return
                elif isinstance(message, pgoutput.Relation):
                    self._on_relation(message)
                elif isinstance(message, (pgoutput.Insert, pgoutput.Update, pgoutput.Delete)):
                    rel = self._rels.get(message.relid)
                    if rel is None or rel.state is None:
                        continue
                    yield self._debezium(rel, message, msg.data_start, cdc.topic_prefix, database), \
                        LsnPosition(self._tx[0], msg.data_start)
        finally:
            rconn.close()

    def _debezium(self, rel: _Rel, message: Any, lsn: int, prefix: str, database: str) -> dict[str, Any]:
        table = rel.state.table  # type: ignore[union-attr]

        def by_name(values: list[Any] | None) -> dict[str, Any] | None:
            if values is None:
                return None
            return {n: v for n, v in zip(rel.names, values, strict=False) if v is not pgoutput.UNCHANGED}

        before = after = None
        if isinstance(message, pgoutput.Insert):
            op, after = "c", message.new
        elif isinstance(message, pgoutput.Update):
            op = "u"
            before = message.old if message.old_kind == "O" else None
            after, _reason = pgoutput.resolve_unchanged(message.new, message.old, message.old_kind, rel.names)
        else:
            op, before = "d", message.old
        tx = self._tx
        return to_debezium_event(table, op, before=by_name(before), after=by_name(after), lsn=lsn, xid=tx[1],
                                 commit_ts_us=tx[2], topic_prefix=prefix, database=database,
                                 schema=rel.relation.namespace, last_commit_lsn=self._prev_commit)

    def ack(self, end_lsn: int) -> None:
        """Acknowledge everything up to `end_lsn` (for `iter_events` consumers)."""
        if self._cursor is not None:
            self._cursor.send_feedback(write_lsn=end_lsn, flush_lsn=end_lsn, force=True)


def stream_to_lake(
    resolved: ResolvedSpec,
    connect_kwargs: dict[str, Any],
    *,
    follow: bool = False,
    stop: threading.Event | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> CdcRunResult:
    """Ensure the slot (initial snapshot on creation), then stream changes into the lake.

    Catch-up (default): returns once every transaction committed before the call is durable in the lake and
    acknowledged. Follow: runs until `stop` is set, flushing by the spec's flush policy and at shutdown.
    """
    t0 = time.monotonic()
    slot = ensure_slot(resolved, connect_kwargs)
    reader = BuiltinReader(resolved, connect_kwargs, progress=progress)
    result = reader.run(follow=follow, stop=stop)
    result.snapshot_rows = slot.snapshot_rows
    result.files = slot.snapshot_files + result.files
    result.seconds = time.monotonic() - t0
    return result
