"""Slot administration of the built-in engine: the pgoutput slot, its initial snapshot's markers, the catalog.

`ensure_slot` creates the spec's slot when it is missing and then takes the initial snapshot (snapshot_mode
initial) inside the snapshot the slot exported at its consistent point, so snapshot rows (op 'r', `_lsn` =
consistent point - 1: the first streamed change can sit at the consistent point itself and must sort after them)
and the stream that follows neither overlap nor miss a change. A crash mid-snapshot is recoverable: a "started"
marker records the consistent point before any file is written and a "complete" marker is written last; a slot
without the complete marker that bankflow created is dropped, the partial snapshot files are deleted and
everything is redone. A slot someone else created (source.manage without slot) is kept: the stream backfills
its tables (`bankflow.engines.builtin.backfill`). The markers live in the lake
(``_bankflow/snapshot-<slot>[.started].json``), next to the data they describe.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from bankflow.engines.builtin.connection import CdcError, connect, replication_connect
from bankflow.engines.builtin.snapshot import Progress, snapshot_stream, take_snapshot
from bankflow.lake.atomic import read_json
from bankflow.lake.filesystem import lake_filesystem
from bankflow.lake.positions import lsn_text, parse_lsn
from bankflow.lake.writer import LakeWriter, put_atomic
from bankflow.render.sql import quote_pg
from bankflow.source.backfill import Coverage
from bankflow.spec.loader import ResolvedSpec

log = logging.getLogger(__name__)

MARKER_DIR = "_bankflow"
SNAPSHOT_MODES = ("initial", "always", "when_needed")  # the modes that take a snapshot when the slot is created


@dataclass
class SlotInfo:
    """What `ensure_slot` did: the initial snapshot it took (nothing when the slot already existed)."""

    snapshot_rows: int = 0
    snapshot_files: list[str] = field(default_factory=list)
    snapshot_dead_letters: int = 0
    created: bool = False  # the slot was created in this run


class SlotRow(NamedTuple):
    plugin: str
    confirmed_flush_lsn: int | None
    active_pid: int | None


def slot_row(conn: Any, slot: str) -> SlotRow | None:
    """The slot as pg_replication_slots shows it, None if there is no such slot."""
    with conn.cursor() as cur:
        cur.execute("SELECT plugin, confirmed_flush_lsn::text, active_pid FROM pg_replication_slots "
                    "WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
    if row is None:
        return None
    plugin, confirmed, active_pid = row
    return SlotRow(plugin, parse_lsn(confirmed) if confirmed else None, active_pid)


def idle_slot(conn: Any, slot: str, timeout: float = 15.0) -> SlotRow:
    """The slot once no walsender holds it (a killed predecessor's walsender notices the closed socket soon)."""
    row = slot_row(conn, slot)
    deadline = time.monotonic() + timeout
    while row is not None and row.active_pid is not None and time.monotonic() < deadline:
        time.sleep(0.1)
        row = slot_row(conn, slot)
    if row is None:
        raise CdcError(f"replication slot {slot!r} does not exist (ensure_slot creates it)")
    if row.active_pid is not None:
        raise CdcError(f"replication slot {slot!r} is in use by process {row.active_pid}; is another "
                       "bankflow cdc running?")
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


class SnapshotMarkers:
    """The initial snapshot's markers in the lake: `started` (before any file), `complete` (after the last)."""

    def __init__(self, fs: Any, root: str, slot: str) -> None:
        self.fs = fs
        self.started = f"{root}/{MARKER_DIR}/snapshot-{slot}.started.json"
        self.complete = f"{root}/{MARKER_DIR}/snapshot-{slot}.json"

    def read(self, path: str) -> dict[str, Any] | None:
        data: dict[str, Any] | None = read_json(self.fs, path)
        return data

    def write(self, path: str, data: dict[str, Any]) -> None:
        put_atomic(self.fs, path, orjson.dumps(data, option=orjson.OPT_INDENT_2))

    def remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path)


def wants_snapshot(resolved: ResolvedSpec) -> bool:
    return resolved.spec.cdc.snapshot_mode in SNAPSHOT_MODES


def _remove_snapshot_files(resolved: ResolvedSpec, writer: LakeWriter, consistent_lsn: int) -> int:
    """Delete the files of an interrupted snapshot (they all carry its consistent point)."""
    spec = resolved.spec
    removed = 0
    for table in spec.tables:
        for f in writer.list_files(stream=snapshot_stream(table), table=table.name,
                                   schema=spec.source.schema_name, topic=spec.topic_for(table)):
            if f.first.commit == consistent_lsn:
                writer.delete(f.key)
                removed += 1
    return removed


def _usable(resolved: ResolvedSpec, row: SlotRow, markers: SnapshotMarkers) -> bool:
    """An existing slot is kept unless its initial snapshot never completed."""
    slot = resolved.spec.cdc.slot
    if row.plugin != "pgoutput":
        raise CdcError(f"replication slot {slot!r} uses plugin {row.plugin!r}, not pgoutput; drop it or "
                       "choose another cdc.slot")
    return not wants_snapshot(resolved) or markers.read(markers.complete) is not None


def _refuse_lost(conn: Any, slot: str) -> None:
    """A slot PostgreSQL invalidated (max_slot_wal_keep_size) cannot be read: say what to do, not what failed."""
    from bankflow.errors import StageError
    from bankflow.status import lost_slot_message

    with conn.cursor() as cur:
        cur.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        found = cur.fetchone()
    if found is not None and found[0] == "lost":
        raise StageError(lost_slot_message(slot))


def _manages_slot(resolved: ResolvedSpec) -> bool:
    from bankflow.source import source_server

    return source_server(resolved).manages("slot")


def _check_publication(conn: Any, publication: str) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
        if cur.fetchone() is None:
            raise CdcError(f"publication {publication!r} does not exist; the source stage creates it "
                           f"(CREATE PUBLICATION {quote_pg(publication)} FOR TABLE …)")


def _server_time_us(connect_kwargs: dict[str, Any]) -> int:
    """The source server's clock now, in µs since the epoch."""
    conn = connect(connect_kwargs)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def _create(resolved: ResolvedSpec, connect_kwargs: dict[str, Any], writer: LakeWriter,
            markers: SnapshotMarkers, progress: Progress | None) -> SlotInfo:
    """Create the slot; with a snapshot mode, take the snapshot while the slot's exported snapshot lives."""
    slot = resolved.spec.cdc.slot
    export = wants_snapshot(resolved)
    # The snapshot rows' commit time: the server's clock just before the slot exists, so it precedes the commit
    # of every change the stream carries after the snapshot (now() in the snapshot's own transaction came after
    # some of them, and a key's history then went back in time).
    snapshot_ts_us = _server_time_us(connect_kwargs) if export else None
    rconn = replication_connect(connect_kwargs)
    consistent: int | None = None
    try:
        rcur = rconn.cursor()
        rcur.execute(f"CREATE_REPLICATION_SLOT {quote_pg(slot)} LOGICAL pgoutput "
                     f"{'EXPORT_SNAPSHOT' if export else 'NOEXPORT_SNAPSHOT'}")
        _name, consistent_point, snapshot_name, _plugin = rcur.fetchone()
        consistent = parse_lsn(consistent_point)
        info = SlotInfo(created=True)
        coverage = Coverage(writer.fs, writer.root, slot)
        coverage.clear()  # a new slot's stream covers what its snapshot (or, without one, its start) covers
        if not export:
            coverage.cover_all(list(resolved.spec.tables), consistent,
                               f"stream only (snapshot_mode {resolved.spec.cdc.snapshot_mode})")
        if export:
            markers.write(markers.started, {"slot": slot, "consistent_lsn": consistent})
            taken = take_snapshot(resolved, connect_kwargs, writer, snapshot_name, consistent, progress,
                                  ts_us=snapshot_ts_us)
            info = SlotInfo(taken.rows, taken.files, taken.dead_letters, created=True)
            markers.write(markers.complete, {
                "slot": slot, "consistent_lsn": consistent, "consistent_lsn_text": lsn_text(consistent),
                "rows": taken.rows, "files": taken.files})
            markers.remove(markers.started)
            coverage.cover_all(list(resolved.spec.tables), consistent, "initial snapshot")
        return info
    except Exception:  # a failure; an interrupt is a crash, which the next run recovers from (module docstring)
        rconn.close()  # it holds the slot: close it before dropping
        if consistent is not None:
            _abandon(resolved, connect_kwargs, writer, markers, consistent)
        raise
    finally:
        rconn.close()


def _abandon(resolved: ResolvedSpec, connect_kwargs: dict[str, Any], writer: LakeWriter, markers: SnapshotMarkers,
             consistent: int) -> None:
    """A slot created in this run whose snapshot failed: drop it (it would hold WAL) and its partial snapshot.

    Only `_create` calls this, for the slot it has just created: a slot that existed before this run is never
    dropped here (its position is what exactly-once resumes from)."""
    slot = resolved.spec.cdc.slot
    try:
        conn = connect(connect_kwargs)
        try:
            _drop(conn, slot)
        finally:
            conn.close()
        removed = _remove_snapshot_files(resolved, writer, consistent)
        markers.remove(markers.started)
        log.warning("the first snapshot failed: dropped the new slot %s and %d partial file(s)", slot, removed)
    except Exception as exc:  # the snapshot's own error is the one to report; the next run redoes this cleanup
        log.warning("could not drop the new slot %s after a failed snapshot: %s", slot, exc)


def ensure_slot(resolved: ResolvedSpec, connect_kwargs: dict[str, Any], *,
                progress: Progress | None = None) -> SlotInfo:
    """Create the pgoutput slot if missing; on creation take the initial snapshot (see the module docstring).

    `progress` gets ``{"events", "files", "done", "total", "unit"}`` while the snapshot runs.
    """
    spec = resolved.spec
    slot = spec.cdc.slot
    fs, root = lake_filesystem(resolved)
    writer = LakeWriter(fs, root, spec.lake)
    markers = SnapshotMarkers(fs, root, slot)
    conn = connect(connect_kwargs)
    try:
        row = slot_row(conn, slot)
        if row is not None:
            _refuse_lost(conn, slot)
            if _usable(resolved, row, markers):
                return SlotInfo()
            if not _manages_slot(resolved) and markers.read(markers.started) is None:
                # A slot someone else created (source/setup.sql): bankflow may not drop it, and it exported no
                # snapshot bankflow could read. It is kept; the stream backfills every table it does not cover
                # yet (bankflow.engines.builtin.backfill), with watermarks, while it goes on. (With a "started"
                # marker bankflow created the slot itself and its snapshot was interrupted: that one it redoes.)
                log.warning("slot %s was not created by bankflow (source.manage does not list slot): keeping it; "
                            "its tables are backfilled while the stream goes on", slot)
                return SlotInfo()
            log.warning("slot %s exists but its initial snapshot never completed: redoing it", slot)
            _drop(conn, slot)
        started = markers.read(markers.started)
        if started is not None:
            removed = _remove_snapshot_files(resolved, writer, int(started["consistent_lsn"]))
            log.warning("removed %d files of an interrupted snapshot", removed)
            markers.remove(markers.started)
        _check_publication(conn, spec.cdc.publication)
        return _create(resolved, connect_kwargs, writer, markers, progress)
    finally:
        conn.close()


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

    With `forget_snapshot`, the snapshot and coverage markers go too, so a new slot takes a new initial snapshot
    (the old snapshot files stay: they are history, and the new ones carry a different consistent point in their keys).
    """
    slot = resolved.spec.cdc.slot
    conn = connect(connect_kwargs)
    try:
        existed = slot_row(conn, slot) is not None
        if existed:
            _drop(conn, slot)
    finally:
        conn.close()
    if forget_snapshot:
        fs, root = lake_filesystem(resolved)
        markers = SnapshotMarkers(fs, root, slot)
        markers.remove(markers.complete)
        markers.remove(markers.started)
        Coverage(fs, root, slot).clear()
    return existed
