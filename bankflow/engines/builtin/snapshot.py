"""The initial snapshot: every spec table, read at the slot's exported snapshot, into op 'r' lake files.

`take_snapshot` runs while the replication connection that created the slot is still open (the exported snapshot
lives only that long). Inside it, one REPEATABLE READ transaction: per table a COPY to a temporary CSV file, read
back in blocks by pyarrow as text columns, cut into batches by the spec's flush policy and written to the lake.
Every row's position is (consistent point, row number, 0), unique per row, so file keys are
``<table>-snapshot-<consistent>.<first row>.00000000-<consistent>.<last row>.00000000``; its `_lsn` is the
consistent point minus one (`snapshot_lsn`): the consistent point is where decoding starts, so the first change
streamed after the snapshot can have exactly that LSN (a delete there tied with the row it deletes and lost, by
`_lsn`, in every latest-version query), while every change the snapshot saw starts at least one aligned WAL record
earlier.

Progress: the rows of each table are estimated first (`estimate_rows`: the planner's estimate from
``pg_class``, or an exact count inside the snapshot for a table never analyzed), so the report says
``done`` of ``total`` rows and a percentage can be shown.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bankflow.engines.builtin.connection import connect
from bankflow.lake.batch import TableBatch
from bankflow.lake.writer import LakeWriter, WrittenFile
from bankflow.render.sql import quote_pg
from bankflow.spec.loader import ResolvedSpec
from bankflow.spec.models import Flush, Table

log = logging.getLogger(__name__)

SNAPSHOT_STREAM_SUFFIX = "-snapshot"
CSV_BLOCK_BYTES = 8 << 20  # pyarrow reads the COPY output in blocks of this size

# The planner's own estimate: the density of the last ANALYZE/VACUUM times the table's current size. A table
# never analyzed has reltuples -1 (PostgreSQL 14+) or 0 pages: NULL, then it is counted.
_ESTIMATE_SQL = """
SELECT c.relname,
       CASE WHEN c.reltuples >= 0 AND c.relpages > 0
            THEN round(c.reltuples / c.relpages
                       * (pg_relation_size(c.oid) / current_setting('block_size')::int))::bigint END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')
"""

Progress = Callable[[dict[str, Any]], None]


@dataclass
class SnapshotResult:
    rows: int = 0
    files: list[str] = field(default_factory=list)
    dead_letters: int = 0  # rows COPY gave that could not be carried (in the dead-letter store, counted here)


def snapshot_stream(table: Table) -> str:
    """The lake stream (file name prefix) of a table's snapshot files."""
    return table.name + SNAPSHOT_STREAM_SUFFIX


def snapshot_lsn(consistent: int) -> int:
    """The `_lsn` of the initial snapshot's rows: below the first change the slot streams (which may start at the
    consistent point itself), above every change the snapshot saw (WAL records start 8-byte aligned, before it)."""
    return consistent - 1


def new_batch(resolved: ResolvedSpec, table: Table, stream: str,
              lake_names: dict[str, str] | None = None) -> TableBatch:
    spec = resolved.spec
    return TableBatch(table, stream=stream, schema=spec.source.schema_name, topic=spec.topic_for(table),
                      lake_names=lake_names)


def estimate_rows(cur: Any, schema: str, tables: list[Table]) -> dict[str, int]:
    """Rows per table, cheaply: the planner's estimate, or count(*) (in the same snapshot) where it has none."""
    names = [t.name for t in tables]
    cur.execute(_ESTIMATE_SQL, (schema, names))
    estimates = {name: int(n) for name, n in cur.fetchall() if n is not None}
    for name in names:
        if name not in estimates:
            cur.execute(f"SELECT count(*) FROM {quote_pg(schema)}.{quote_pg(name)}")
            estimates[name] = int(cur.fetchone()[0])
    return estimates


class _Snapshot:
    """One snapshot run: the transaction's identity (xid, time), the writer, and progress so far."""

    def __init__(self, resolved: ResolvedSpec, writer: LakeWriter, consistent: int, progress: Progress | None):
        self.resolved = resolved
        self.writer = writer
        self.consistent = consistent
        self.flush: Flush = resolved.spec.lake.flush
        self.progress = progress
        self.xid = 0
        self.ts_us = 0
        self.total = 0
        self.result = SnapshotResult()

    def report(self, done: int) -> None:
        if self.progress is not None:
            self.progress({"events": done, "files": len(self.result.files), "done": done, "total": self.total,
                           "unit": "snapshot rows"})

    def table(self, cur: Any, table: Table, tmp_dir: Path) -> None:
        """COPY one table to a temporary CSV file, then into batches; the file is removed either way."""
        schema = self.resolved.spec.source.schema_name
        columns = ", ".join(quote_pg(c.name) for c in table.columns)
        fd, path = tempfile.mkstemp(prefix=f"snapshot-{table.name}-", suffix=".csv", dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                cur.copy_expert(f"COPY (SELECT {columns} FROM {quote_pg(schema)}.{quote_pg(table.name)}) "
                                "TO STDOUT WITH (FORMAT csv)", out)
            if os.path.getsize(path) > 0:
                self.load_csv(table, path)
        finally:
            os.unlink(path)

    def load_csv(self, table: Table, path: str) -> None:
        """The CSV's rows → op 'r' rows at (consistent point, row number), flushed by the flush policy."""
        batch = new_batch(self.resolved, table, snapshot_stream(table))
        row_no = 0
        for piece in _csv_pieces(path, [c.name for c in table.columns], batch, self.flush):
            cols, ops, lsns = batch.text_sink()
            batch.begin_text_tx(self.consistent, self.xid, self.ts_us, row_no,
                                lsn_override=snapshot_lsn(self.consistent))
            for col, arr in zip(cols, piece.columns, strict=True):
                col.extend(arr.to_pylist())
            ops.extend(["r"] * piece.num_rows)
            lsns.extend(range(row_no, row_no + piece.num_rows))
            batch.approx_bytes += piece.nbytes
            row_no += piece.num_rows
            if batch.should_flush(self.flush):
                self._write(batch)
                self.report(self.result.rows + row_no)
        if not batch.empty:
            self._write(batch)
        self.result.rows += row_no
        self.report(self.result.rows)

    def _write(self, batch: TableBatch) -> None:
        written = _write(self.writer, batch)
        if written.key:
            self.result.files.append(written.key)
        self.result.dead_letters += written.dead_letters


def _csv_pieces(path: str, names: list[str], batch: TableBatch, flush: Flush) -> Iterator[Any]:
    """Record batches of the CSV, sliced so none overfills `batch` (its rows are read between pieces)."""
    import pyarrow.csv as pacsv

    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, block_size=CSV_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            # binary, as pgoutput sends them: a value that is not valid UTF-8 (a SQL_ASCII source) becomes a
            # dead letter in the batch instead of failing the whole read
            column_types={n: "binary" for n in names}, strings_can_be_null=True,
            quoted_strings_can_be_null=False, null_values=[""]),
    )
    for record_batch in reader:
        start = 0
        while start < record_batch.num_rows:
            piece = record_batch.slice(start, max(1, flush.max_rows - batch.rows))
            start += piece.num_rows
            yield piece




def _write(writer: LakeWriter, batch: TableBatch) -> WrittenFile:
    """One snapshot file, durably (a module function: a test interrupts a snapshot here)."""
    return writer.write_batch(batch)


def take_snapshot(resolved: ResolvedSpec, connect_kwargs: dict[str, Any], writer: LakeWriter, snapshot_name: str,
                  consistent: int, progress: Progress | None = None, ts_us: int | None = None) -> SnapshotResult:
    """COPY every spec table inside the exported snapshot `snapshot_name` into op 'r' files at `consistent`.
    `ts_us`: the rows' commit time (the caller's clock reading from before the slot existed; default: now())."""
    spec = resolved.spec
    run = _Snapshot(resolved, writer, consistent, progress)
    conn = connect(connect_kwargs, autocommit=False)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
            cur.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, "
                        "(extract(epoch FROM now()) * 1000000)::bigint")
            run.xid, now_us = cur.fetchone()
            run.ts_us = now_us if ts_us is None else min(ts_us, now_us)
            estimates = estimate_rows(cur, spec.source.schema_name, list(spec.tables))
            run.total = sum(estimates.values())
            log.info("snapshot of %d table(s), about %d rows", len(spec.tables), run.total)
            run.report(0)
            tmp_dir = resolved.state_dir / "tmp"
            tmp_dir.mkdir(parents=True, exist_ok=True)
            for table in spec.tables:
                run.table(cur, table, tmp_dir)
        conn.rollback()
    finally:
        conn.close()
    return run.result
