"""Backfills of the built-in engine: a table's existing rows read while the stream goes on (DBLog's watermarks).

Which tables need one is decided from the coverage markers in the lake (`bankflow.source.backfill`, shared with
the Debezium engine): a table new to the spec or added back, a `bankflow backfill --table` request, or one a
crashed run left half done.

The algorithm (Netflix DBLog, "A Watermark Based Change-Data-Capture Framework"), per chunk of the table in
primary-key order (`BuiltinCdc.backfill_chunk_rows` rows):

1. write a low watermark: ``pg_logical_emit_message(true, 'bankflow-watermark', …)`` in its own transaction;
   pgoutput delivers it ('M', with ``messages 'true'``) in commit order with the transactions around it;
2. wait until every transaction that was running when the low watermark committed has ended (its xids from
   ``pg_current_snapshot()``, polled with ``pg_xact_status``);
3. SELECT the chunk (COPY of ``… WHERE (key) > (last key) [AND (where)] ORDER BY key LIMIT n``, read-only);
4. write a high watermark.

The stream, from the first low watermark of a table's backfill on, records the primary key of every change of that
table. At a high watermark the chunk's rows whose key changed since the backfill began are dropped (the stream
carries them, newer), the others are written as op 'r' rows to the table's ``<table>-backfill`` lake stream, each
with ``_lsn`` = the commit LSN of the chunk's low watermark and the file position (that LSN, row number in the
chunk, 0: unique per row, each chunk at its own low watermark). That `_lsn` orders a backfill row correctly against
every change of its key: a change committed before the SELECT's snapshot and not in the stream since the backfill
began has a smaller LSN (its transaction ended before step 3 — step 2 makes sure of it); a change after the snapshot
comes from a transaction that was not running at the low watermark, so all of its WAL, and its change LSN, comes
after it. Each existing row arrives once: from the backfill, or (when it changed during the backfill) from the
stream.

Crash safety: the slot is not acknowledged past a chunk's low watermark until the chunk's file is durable; before
the file is written the marker records the chunk as pending (its position, last key and row count), after it the
marker's progress moves on. A restarted run resumes after the last chunk whose file exists.

Privileges on the source: SELECT on the table and EXECUTE on ``pg_logical_emit_message`` (granted to PUBLIC by
PostgreSQL; `bankflow` creates nothing for a backfill), plus the replication role the stream already needs.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bankflow.engines.builtin.connection import connect
from bankflow.lake.positions import parse_file_name
from bankflow.render.sql import quote_pg
from bankflow.source.backfill import checked_where
from bankflow.spec.loader import ResolvedSpec
from bankflow.spec.models import Table

log = logging.getLogger(__name__)

WATERMARK_PREFIX = "bankflow-watermark"
BACKFILL_STREAM_SUFFIX = "-backfill"
DEFAULT_CHUNK_ROWS = 10_000
_XACT_POLL = 0.02  # seconds between checks of the transactions a low watermark waits for
_XACT_LOG_AFTER = 10.0  # a wait this long is logged (a long transaction holds the backfill)

def backfill_stream(table: Table) -> str:
    return table.name + BACKFILL_STREAM_SUFFIX


def chunk_rows(resolved: ResolvedSpec) -> int:
    return int(getattr(resolved.spec.cdc, "backfill_chunk_rows", DEFAULT_CHUNK_ROWS) or DEFAULT_CHUNK_ROWS)


# ---------------------------------------------------------------- chunks

@dataclass
class Chunk:
    """One chunk's rows as the SELECT returned them (text per column, spec column order)."""

    backfill: str
    number: int
    table: str
    columns: list[list[Any]]
    keys: list[tuple[Any, ...]]
    last: bool  # fewer rows than asked: the table is done after this chunk
    end: list[Any] | None  # the key the next chunk starts after
    names: list[str] = field(default_factory=list)  # the columns, in the order of `columns`
    gone: list[tuple[Any, ...]] = field(default_factory=list)  # keys the lake has live and the source has not
    redo: bool = False  # set by the stream: not written, read this range again
    processed: threading.Event = field(default_factory=threading.Event)

    @property
    def rows(self) -> int:
        return len(self.keys)


def watermark(run: str, backfill: str, number: int, mark: str) -> str:
    return orjson.dumps({"run": run, "backfill": backfill, "chunk": number, "mark": mark}).decode()


def parse_watermark(content: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _csv_columns(data: bytes, names: list[str]) -> list[list[Any]]:
    import pyarrow.csv as pacsv

    if not data:
        return [[] for _ in names]
    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={n: "string" for n in names}, strings_can_be_null=True,
                                             quoted_strings_can_be_null=False, null_values=[""]))
    return [table.column(i).to_pylist() for i in range(len(names))]


class Backfiller:
    """The worker thread of one stream run: chunk after chunk, table after table (see the module docstring).

    The stream thread takes the chunks (`take`) at their high watermarks and sets `Chunk.processed`; the worker
    then goes on. `error` holds what stopped the worker (the stream raises it).
    """

    def __init__(self, resolved: ResolvedSpec, connect_kwargs: dict[str, Any], shape: Callable[[str], Table]) -> None:
        self.resolved = resolved
        self.connect_kwargs = connect_kwargs
        self.shape = shape  # name → the shape the table's stream is in now
        self.run = uuid.uuid4().hex  # watermarks of an earlier (crashed) run are not this run's
        self.slot = resolved.spec.cdc.slot
        self.schema = resolved.spec.source.schema_name
        self.limit = chunk_rows(resolved)
        self.jobs: queue.Queue[dict[str, Any]] = queue.Queue()
        self.queued: set[str] = set()  # backfill ids given to the worker
        self.chunks: dict[tuple[str, int], Chunk] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.current: dict[str, Any] | None = None

    def add(self, record: dict[str, Any]) -> bool:
        if record["id"] in self.queued:
            return False
        self.queued.add(record["id"])
        self.jobs.put(record)
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="bankflow-backfill", daemon=True)
            self.thread.start()
        return True

    def take(self, backfill: str, number: int) -> Chunk | None:
        with self.lock:
            return self.chunks.pop((backfill, number), None)

    def close(self) -> None:
        self.stop.set()
        with self.lock:
            for chunk in self.chunks.values():
                chunk.processed.set()
        if self.thread is not None:
            self.thread.join(timeout=30)

    # ---- the worker

    def _run(self) -> None:
        try:
            conn = connect(self.connect_kwargs)
            reader = connect(self.connect_kwargs, autocommit=False)
            reader.set_session(readonly=True)
            try:
                while not self.stop.is_set():
                    try:
                        record = self.jobs.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    self.current = record
                    self._table(conn, reader, record)
                    self.current = None
            finally:
                conn.close()
                reader.close()
        except BaseException as exc:  # the stream thread reports it
            if not self.stop.is_set():
                log.error("backfill stopped: %s", exc)
                self.error = exc

    def _table(self, conn: Any, reader: Any, record: dict[str, Any]) -> None:
        """Range chunks in key order; then (without --where) a sweep of the keys the lake has live and no chunk
        read: rows that exist are read by key, the others were deleted while the stream did not cover the
        table (a table added back) and become deletes."""
        name = record["table"]
        after = record.get("after")
        number = int(record.get("chunks", 0))
        where = checked_where(record["where"]) if record.get("where") else None
        read: set[tuple[Any, ...]] = set()
        live: set[tuple[Any, ...]] = set()
        if where is None:  # keys this backfill read before an interruption count as read
            live, read = self._live_keys(self.shape(name), record.get("first_lsn"))
        sweep: list[tuple[Any, ...]] | None = None
        while not self.stop.is_set():
            number += 1
            table = self.shape(name)
            self._emit(conn, record["id"], number, "low")
            self._wait_transactions(conn)
            if sweep is None:
                chunk = self._select(reader, record["id"], number, table, after, where)
                read.update(chunk.keys)
                if chunk.last:
                    candidates = sorted(live - read)
                    chunk.last = not candidates
            else:
                piece = sweep[:self.limit]
                chunk = self._select(reader, record["id"], number, table, None, None, keys=piece)
                found = set(chunk.keys)
                chunk.gone = [k for k in piece if k not in found]
                chunk.last = len(sweep) <= self.limit
                chunk.end = after
            with self.lock:
                self.chunks[(record["id"], number)] = chunk
            self._emit(conn, record["id"], number, "high")
            while not chunk.processed.wait(0.2):
                if self.stop.is_set():
                    return
            if chunk.redo:  # the table changed shape under the chunk: read it again
                continue
            if chunk.last:
                return
            if sweep is None and len(chunk.keys) < self.limit:
                sweep = candidates
                log.info("backfill of %s: %d key(s) the lake has live were not read: checking them", name,
                         len(sweep))
            elif sweep is not None:
                sweep = sweep[self.limit:]
            else:
                after = chunk.end

    def _live_keys(self, table: Table, since: int | None) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
        """Keys whose latest version in the lake is not a delete (as text, like the chunks' keys), and the keys
        of this backfill's own files so far (from its first chunk at `since` on)."""
        from bankflow.lake.filesystem import lake_filesystem
        from bankflow.lake.writer import LakeWriter
        from bankflow.source.backfill import live_keys

        spec = self.resolved.spec
        fs, root = lake_filesystem(self.resolved)
        writer = LakeWriter(fs, root, spec.lake)
        directory = writer.directory(table=table.name, schema=self.schema, topic=spec.topic_for(table))

        def own(path: str) -> bool:
            parsed = parse_file_name(path.rsplit("/", 1)[-1])
            return (since is not None and parsed is not None and parsed[0] == backfill_stream(table)
                    and parsed[1].commit >= since)

        return live_keys(fs, directory, list(table.primary_key), as_key=_key_text, own=own)

    def _emit(self, conn: Any, backfill: str, number: int, mark: str) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_logical_emit_message(true, %s, %s)",
                        (WATERMARK_PREFIX, watermark(self.run, backfill, number, mark)))

    def _wait_transactions(self, conn: Any) -> None:
        """Until every transaction running now (just after the low watermark committed) has ended."""
        with conn.cursor() as cur:
            cur.execute("SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) AS x")
            xids = [row[0] for row in cur.fetchall()]
            started = time.monotonic()
            logged = False
            while xids and not self.stop.is_set():
                cur.execute("SELECT x::text FROM unnest(%s::text[]::xid8[]) AS x WHERE pg_xact_status(x) = "
                            "'in progress'", (xids,))
                xids = [row[0] for row in cur.fetchall()]
                if not xids:
                    return
                if not logged and time.monotonic() - started > _XACT_LOG_AFTER:
                    log.warning("backfill waits for transaction(s) %s to end", ", ".join(xids))
                    logged = True
                time.sleep(_XACT_POLL)

    def _select(self, reader: Any, backfill: str, number: int, table: Table, after: list[Any] | None,
                where: str | None, keys: list[tuple[Any, ...]] | None = None) -> Chunk:
        names = [c.name for c in table.columns]
        wanted = keys
        keys_ = list(table.primary_key)
        key_sql = ", ".join(quote_pg(k) for k in keys_)
        conditions = []
        with reader.cursor() as cur:
            def literals(values: Any) -> str:
                return ", ".join(cur.mogrify("%s", (value,)).decode() for value in values)
            if after is not None:
                conditions.append(f"({key_sql}) > ({literals(after)})" if len(keys_) > 1
                                  else f"{key_sql} > {literals(after)}")
            if wanted is not None:
                conditions.append(f"({key_sql}) IN ({', '.join(f'({literals(k)})' for k in wanted)})"
                                  if wanted else "false")
            if where:
                conditions.append(f"({where})")
            relation = f"{quote_pg(self.schema)}.{quote_pg(table.name)}"
            cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                        "AND NOT attisdropped", (relation,))
            live = {row[0] for row in cur.fetchall()}
            # a column dropped in the source that the stream's shape still has (no event since): NULL, as the
            # stream's events would carry it
            selected = [quote_pg(n) if n in live else f"NULL AS {quote_pg(n)}" for n in names]
            sql = (f"SELECT {', '.join(selected)} FROM {relation}"
                   + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
                   + f" ORDER BY {key_sql} LIMIT {int(self.limit)}")
            out = io.BytesIO()
            try:
                cur.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", out)
            finally:
                reader.rollback()
        columns = _csv_columns(out.getvalue(), names)
        index = [names.index(k) for k in keys_]
        rows = len(columns[0]) if columns else 0
        row_keys = [tuple(columns[i][r] for i in index) for r in range(rows)]
        return Chunk(backfill, number, table.name, columns, row_keys, last=rows < self.limit,
                     end=list(row_keys[-1]) if row_keys else after, names=names)


def _key_text(value: Any) -> Any:
    """A key value read back from Parquet as Postgres' text of it (integers, text, uuid, numeric)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def key_text(value: Any) -> Any:
    """A key value of a pgoutput tuple (bytes) as the chunk's CSV has it (str)."""
    return value.decode() if isinstance(value, bytes) else value
