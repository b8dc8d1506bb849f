"""Per-table column batches: the one code path every event source feeds before Parquet.

A `TableBatch` holds the rows of one table until the flush policy (or a replay cut) turns them into a file: the
position range and commit time of its events, the rows, and the events that became dead letters. Ways in:

- `append_debezium_values(values, positions)`: the bulk path for raw message values (JSON bytes) of one stream,
  in order (the Kafka consumer); `bankflow.lake.decode` turns them into Arrow chunks, and the few it does not
  take in bulk come back through the per-event path.
- `append_debezium_value(value, position)` / `append_debezium(event, position)`: one Debezium 3.6 change event,
  raw or as a dict (JsonConverter, ``decimal.handling.mode=string``,
  ``time.precision.mode=adaptive_time_microseconds``).
- the text fast path (`text_sink`, `begin_text_tx`, `append_text_row`): the built-in pgoutput reader appends the
  raw text of each column straight into per-column lists, no per-row dicts.

Rows from the per-event and text paths stay in Python lists until `to_arrow` (or until the input switches), where
each column converts in bulk (`bankflow.lake.convert`: numeric text → decimal128 exactly, never through float).
A bulk cast that fails falls back to value-by-value conversion to find the culprits; their events go to the
dead-letter list with the position and the reason and the rest of the batch carries on.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bankflow.lake.arrow_schema import table_arrow_schema
from bankflow.lake.convert import TS_UTC, Converter, convert_column, json_converter, text_converter
from bankflow.lake.deadletter import DeadLetter
from bankflow.lake.decode import (
    SOURCE_TS_MAX,
    SOURCE_TS_MIN,
    BulkRows,
    DebeziumDecoder,
    EventRow,
    Malformed,
    ShapeMismatch,
    judge_event,
    parse_value,
)
from bankflow.lake.positions import LsnPosition
from bankflow.spec.models import Flush, Table

__all__ = ["DeadLetter", "TableBatch"]


# ---------------------------------------------------------------- pending rows (one input at a time)

class _JsonRows:
    """Rows from Debezium events, one at a time: values per column and each event's source fields, position and
    the event itself (for its dead letter if a value does not convert)."""

    __slots__ = ("cols", "events", "lsns", "ops", "positions", "ts_us", "tx_ids")

    def __init__(self, ncols: int) -> None:
        self.cols: list[list[Any]] = [[] for _ in range(ncols)]
        self.ops: list[str] = []
        self.lsns: list[int] = []
        self.tx_ids: list[int | None] = []
        self.ts_us: list[int | None] = []
        self.positions: list[Any] = []
        self.events: list[dict[str, Any]] = []

    def append(self, names: list[str], row: EventRow, position: Any, event: dict[str, Any]) -> None:
        get = row.row.get
        for name, col in zip(names, self.cols, strict=True):
            col.append(get(name))
        self.ops.append(row.op)
        self.lsns.append(row.lsn)
        self.tx_ids.append(row.tx_id)
        self.ts_us.append(row.ts_us)
        self.positions.append(position)
        self.events.append(event)

    def last_position(self) -> Any:
        return self.positions[-1]

    def position(self, i: int) -> Any:
        return self.positions[i]

    def event(self, i: int) -> Any:
        return self.events[i]

    def cdc_values(self) -> tuple[list[int], list[int | None], list[int | None]]:
        """(_lsn, _tx_id, _source_ts in µs) per row."""
        return self.lsns, self.tx_ids, self.ts_us


_Run = tuple[int, int | None, int | None, int, int | None, int | None]


class _TextRows:
    """Rows as the built-in reader appends them: text per column, op and change LSN per row, and runs of rows
    that share a transaction: (first row, xid, commit ts µs, commit lsn, _lsn override for snapshot rows or None,
    index of the run's first row in its transaction or None). Inside a run the index goes up by one per row, so
    a row's position (commit lsn, change lsn, seq = index) costs nothing per row; a gap in the indexes (an event of
    the transaction that is not a row here: a dead letter, a skipped replay) starts a new run. Runs without an
    index (snapshot rows, backfill chunks: their "LSN" is a row number) have index 0 throughout."""

    __slots__ = ("cols", "lsns", "names", "ops", "runs", "starts", "table")

    def __init__(self, names: list[str], table: str) -> None:
        self.names = names
        self.table = table
        self.cols: list[list[Any]] = [[] for _ in names]
        self.ops: list[str] = []
        self.lsns: list[int] = []
        self.runs: list[_Run] = []
        self.starts: list[int] = []  # first row of each run, for bisecting

    def begin(self, commit_lsn: int, xid: int | None, commit_ts_us: int | None, lsn_override: int | None,
              first_index: int | None = None) -> None:
        start = len(self.ops)
        if self.runs and self.runs[-1][0] == start:  # the previous run got no rows
            self.runs.pop()
            self.starts.pop()
        self.runs.append((start, xid, commit_ts_us, commit_lsn, lsn_override, first_index))
        self.starts.append(start)

    def _run(self, i: int) -> _Run:
        return self.runs[bisect_right(self.starts, i) - 1]

    @staticmethod
    def _index(run: _Run, i: int) -> int:
        first = run[5]
        return 0 if first is None else first + i - run[0]

    def next_index(self) -> int | None:
        """The index the next row continues the last run with (None: no run, or a run without indexes)."""
        if not self.runs or self.runs[-1][5] is None:
            return None
        return self._index(self.runs[-1], len(self.ops))

    def last_position(self) -> LsnPosition:
        run = self.runs[-1]
        last = len(self.ops) - 1
        return LsnPosition(run[3], self.lsns[last], self._index(run, last))

    def position(self, i: int) -> LsnPosition:
        run = self._run(i)
        return LsnPosition(run[3], self.lsns[i], self._index(run, i))

    def event(self, i: int) -> dict[str, Any]:
        """Row `i` as a Debezium-shaped event (what its dead letter keeps)."""
        _start, xid, ts, commit, override, _index = self._run(i)
        op = self.ops[i]
        values = {n: (c[i].decode(errors="replace") if isinstance(c[i], bytes) else c[i])
                  for n, c in zip(self.names, self.cols, strict=True)}
        return {"op": op, "before" if op == "d" else "after": values,
                "source": {"table": self.table, "lsn": self.lsns[i] if override is None else override,
                           "txId": xid, "ts_us": ts, "commit_lsn": commit}}

    def cdc_values(self) -> tuple[list[int], list[int | None], list[int | None]]:
        """(_lsn, _tx_id, _source_ts in µs) per row, expanded from the runs."""
        spans = list(zip(self.runs, [*self.starts[1:], len(self.ops)], strict=True))
        xids: list[int | None] = []
        tss: list[int | None] = []
        for (start, xid, ts, _commit, _override, _index), end in spans:
            xids.extend([xid] * (end - start))
            tss.extend([ts] * (end - start))
        if all(run[4] is None for run in self.runs):
            return self.lsns, xids, tss
        lsns: list[int] = []
        for (start, _xid, _ts, _commit, override, _index), end in spans:
            lsns.extend([override] * (end - start) if override is not None else self.lsns[start:end])
        return lsns, xids, tss


_Pending = _JsonRows | _TextRows


# ---------------------------------------------------------------- the batch

class ShapeChanged(Exception):
    """A Debezium event whose columns differ from the batch's shape (`TableBatch.follow_shapes`): nothing from it
    on is in the batch; the consumer decides by the table's schema-change policy and feeds the rest again."""

    def __init__(self, position: Any, mismatch: ShapeMismatch) -> None:
        super().__init__(f"columns changed at {position}: unknown {list(mismatch.unknown)}, "
                         f"missing {list(mismatch.missing)}")
        self.position = position
        self.mismatch = mismatch


class TableBatch:
    """Rows for one table, accumulated until the flush policy (or a replay cut) turns them into a file.

    `stream` names the sequence of files this batch belongs to in the file key (the built-in reader uses the
    table name, the Kafka consumer the topic); `schema` and `topic` fill the lake layout placeholders.
    """

    def __init__(self, table: Table, *, stream: str | None = None, schema: str = "public",
                 topic: str | None = None, lake_names: dict[str, str] | None = None) -> None:
        self.table = table
        # source column → its name in the file (a retyped column whose raw column could not be widened)
        self.lake_names = dict(lake_names or {})
        self.stream = stream or table.name
        self.schema_name = schema
        self.topic = topic or table.name
        self.arrow_schema = table_arrow_schema(table)
        self.names = [c.name for c in table.columns]
        self._columns = frozenset(self.names)
        self._nullable = [f.nullable for f in self.arrow_schema][: len(self.names)]
        self._text_conv: list[Converter] = [text_converter(c.pg_type) for c in table.columns]
        self._json_conv: list[Converter] = [json_converter(c.pg_type) for c in table.columns]
        self._decoder = DebeziumDecoder(table)
        # Debezium events with other columns than the shape raise ShapeChanged (the consumer's policy decides)
        # instead of becoming dead letters; columns in `absent_ok` may be missing (events older than them).
        self.follow_shapes = False
        self.absent_ok: frozenset[str] = frozenset()
        self.not_carried: frozenset[str] = frozenset()  # source columns the spec leaves out: dropped from events
        self._reset()

    # ---- state

    def _reset(self) -> None:
        self._pending: _Pending = _JsonRows(len(self.names))
        self._chunks: list[list[pa.Array]] = []  # converted rows: source columns, _op, _lsn, _tx_id, _source_ts
        self._chunk_rows = 0
        self.dead_letters: list[DeadLetter] = []
        self.approx_bytes = 0
        self._other_events = 0  # converted rows and events dead-lettered on arrival
        self._started: float | None = None
        self._first: Any = None
        self._last_other: Any = None  # last position not in the pending rows
        self._first_ts: int | None = None

    @property
    def rows(self) -> int:
        """Rows in the batch (dead-lettered events are not rows)."""
        return self._chunk_rows + len(self._pending.ops)

    @property
    def events(self) -> int:
        """Events in the batch, including dead-lettered ones (they count for the position range)."""
        return self._other_events + len(self._pending.ops)

    @property
    def empty(self) -> bool:
        return self._first is None

    @property
    def first_position(self) -> Any:
        return self._first

    @property
    def last_position(self) -> Any:
        last = self._last_other
        if self._pending.ops:
            row_last = self._pending.last_position()
            if last is None or row_last > last:
                last = row_last
        return last

    @property
    def first_source_ts_us(self) -> int | None:
        """Commit time of the first event: fills `{date}` in the layout (deterministic, unlike wall-clock)."""
        return self._first_ts

    @property
    def age_seconds(self) -> float:
        return 0.0 if self._started is None else time.monotonic() - self._started

    def should_flush(self, flush: Flush) -> bool:
        if self.events == 0:
            return False
        return (self.rows >= flush.max_rows or self.approx_bytes >= flush.max_bytes
                or self.age_seconds >= flush.max_seconds)

    def _touch(self, position: Any, ts_us: int | None) -> None:
        if self._first is None:
            self._started = time.monotonic()
            self._first = position
            # a commit time no date can name never reaches the file key (the decoders dead-letter such events;
            # this covers the text path's and any caller's own)
            datable = ts_us is not None and SOURCE_TS_MIN <= ts_us <= SOURCE_TS_MAX
            self._first_ts = ts_us if datable else None

    def _note_other(self, position: Any) -> None:
        self._other_events += 1
        if self._last_other is None or position > self._last_other:
            self._last_other = position

    def _json_rows(self) -> _JsonRows:
        pending = self._pending
        if type(pending) is _JsonRows:
            return pending
        self._flush_pending()
        self._pending = _JsonRows(len(self.names))
        return self._pending

    def _text_rows(self) -> _TextRows:
        pending = self._pending
        if type(pending) is _TextRows:
            return pending
        self._flush_pending()
        self._pending = _TextRows(self.names, self.table.name)
        return self._pending

    # ---- Debezium events

    def append_debezium(self, event: dict[str, Any], position: Any) -> bool:
        """Append one Debezium change event; False if it went to the dead-letter list instead."""
        pending = self._json_rows()
        ts_us, judged = judge_event(event, self._columns, self.table.name,
                                    self.names if self.follow_shapes else None)
        if isinstance(judged, ShapeMismatch):
            if not set(judged.unknown) <= self.not_carried or not set(judged.missing) <= self.absent_ok:
                raise ShapeChanged(position, judged)
            judged = judged.row  # an event from before those columns were added: they are absent (NULL)
        self._touch(position, ts_us)
        if isinstance(judged, str):
            self._dead_on_arrival(position, judged, event)
            return False
        pending.append(self.names, judged, position, event)
        row = judged.row
        self.approx_bytes += 16 * len(row) + sum(len(v) for v in row.values() if isinstance(v, str))
        return True

    def append_debezium_value(self, value: bytes | str, position: Any) -> bool:
        """One raw message value (Debezium JSON); malformed or unconvertible events become dead letters."""
        event = parse_value(value)
        if isinstance(event, Malformed):
            self.dead_letter(position, event.reason, event.text)
            return False
        if type(event) is not dict:
            self.dead_letter(position, f"not a JSON object: {type(event).__name__}", event)
            return False
        try:
            return self.append_debezium(event, position)
        except ShapeChanged:
            raise
        except Exception as exc:
            self.dead_letter(position, f"cannot convert: {exc!r}", event)
            return False

    def append_debezium_values(self, values: Sequence[bytes | str], positions: Sequence[Any]) -> int:
        """The bulk path: raw message values of one stream in order (no tombstones), with their positions.

        Returns how many became rows. Output, dead letters and positions are those of calling
        `append_debezium_value` for each value in turn.
        """
        if len(values) != len(positions):
            raise ValueError(f"{len(values)} values but {len(positions)} positions")
        before = self.rows
        for part in self._decoder.decode(values, positions):
            if isinstance(part, BulkRows):
                self._add_chunk(part)
            else:
                self.append_debezium_value(part.value, part.position)
        return self.rows - before

    def _add_chunk(self, part: BulkRows) -> None:
        """Rows converted in bulk join the batch as one chunk, after any pending per-event rows."""
        self._flush_pending()  # keep row order: rows from the per-event path come first
        self._touch(part.first, part.first_ts)
        self._chunks.append(part.arrays)
        self._chunk_rows += part.rows
        self._other_events += part.rows
        if self._last_other is None or part.last > self._last_other:
            self._last_other = part.last
        self.approx_bytes += sum(a.nbytes for a in part.arrays)

    # ---- pgoutput text fast path

    def text_sink(self) -> tuple[list[list[Any]], list[str], list[int]]:
        """The column lists, op list and LSN list the built-in reader appends to directly.

        Contract per row: one value (bytes text or None) appended to every column list, the op to `ops`, the
        change LSN to `lsns`, `approx_bytes` increased; `begin_text_tx` before the first row of each
        transaction in this batch, and again whenever the next row's index in its transaction is not the one
        after the previous row's. Positions, event counts and CDC columns all derive from these lists. A flush
        (`to_arrow`) starts new lists: call this again after one.
        """
        pending = self._text_rows()
        return pending.cols, pending.ops, pending.lsns

    def begin_text_tx(self, commit_lsn: int, xid: int | None, commit_ts_us: int | None, first_lsn: int,
                      lsn_override: int | None = None, first_index: int | None = None) -> None:
        """Start a run of rows from one transaction (xid and commit time are per transaction in pgoutput).

        `first_index`: the index of the run's first row among its table's events in the transaction; the rows
        after it follow one by one (positions `LsnPosition(commit_lsn, lsn, seq)`). Snapshot rows and backfill
        chunks pass none (index 0): their row number is the "LSN" (it orders them in the file key), and
        `lsn_override` the `_lsn` every row of the run carries.
        """
        self._text_rows().begin(commit_lsn, xid, commit_ts_us, lsn_override, first_index)
        self._touch(LsnPosition(commit_lsn, first_lsn, first_index or 0), commit_ts_us)

    def append_text_row(self, op: str, values: list[Any], position: LsnPosition, xid: int | None,
                        commit_ts_us: int | None) -> None:
        """The fast path for one row (values in spec column order, bytes text or None)."""
        pending = self._text_rows()
        runs = pending.runs
        if (not runs or runs[-1][3] != position.commit or runs[-1][1] != xid
                or pending.next_index() != position.seq):
            self.begin_text_tx(position.commit, xid, commit_ts_us, position.lsn, first_index=position.seq)
        for col, value in zip(pending.cols, values, strict=True):
            col.append(value)
        pending.ops.append(op)
        pending.lsns.append(position.lsn)
        self.approx_bytes += sum(len(v) for v in values if v is not None) + 8 * len(values)

    # ---- dead letters

    def dead_letter(self, position: Any, reason: str, event: Any, ts_us: int | None = None) -> None:
        """Record an event that cannot become a row (it still counts for the batch's position range)."""
        self._touch(position, ts_us)
        self._dead_on_arrival(position, reason, event)

    def _dead_on_arrival(self, position: Any, reason: str, event: Any) -> None:
        self._note_other(position)
        self._dead(position, reason, event)

    def _dead(self, position: Any, reason: str, event: Any) -> None:
        self.dead_letters.append(DeadLetter(self.table.name, position, reason, event))

    # ---- conversion

    def _convert_pending(self) -> list[pa.Array]:
        pending = self._pending
        convs = self._text_conv if type(pending) is _TextRows else self._json_conv
        bad: dict[int, str] = {}
        arrays = [convert_column(conv, col, name, nullable, bad)
                  for conv, col, name, nullable in zip(convs, pending.cols, self.names, self._nullable, strict=True)]
        lsns, xids, tss = pending.cdc_values()
        arrays += [
            pa.array(pending.ops, pa.string()),
            pa.array(lsns, pa.int64()),
            pa.array(xids, pa.int64()),
            pa.array(tss, pa.int64()).cast(TS_UTC),
        ]
        if bad:
            for i in sorted(bad):
                self._dead(pending.position(i), bad[i], pending.event(i))
            keep = pa.array([i not in bad for i in range(len(pending.ops))])
            arrays = [pc.filter(a, keep) for a in arrays]
        return arrays

    def _flush_pending(self) -> None:
        """Convert the pending rows into an Arrow chunk (keeping their position range and event count)."""
        pending = self._pending
        if not pending.ops:
            return
        last = self.last_position
        arrays = self._convert_pending()
        self._chunks.append(arrays)
        self._chunk_rows += len(arrays[0])
        self._other_events += len(pending.ops)
        self._last_other = last
        self._pending = (_TextRows(self.names, self.table.name) if type(pending) is _TextRows
                         else _JsonRows(len(self.names)))

    def to_arrow(self, file_key: str) -> pa.Table:
        """Every row as an Arrow table in `table_arrow_schema` order; `_file` = the key the rows go to.

        Conversion failures found here move their events to `dead_letters` (check it after calling).
        """
        self._flush_pending()
        chunks = self._chunks
        schema = self.arrow_schema
        if not chunks:
            return schema.empty_table()
        columns = [pa.chunked_array([c[i] for c in chunks], type=schema.field(i).type)
                   for i in range(len(chunks[0]))]
        columns.append(pa.chunked_array([pa.repeat(pa.scalar(file_key, pa.string()), self._chunk_rows)]))
        table = pa.Table.from_arrays(columns, schema=schema)
        if self.lake_names:
            table = table.rename_columns([self.lake_names.get(n, n) for n in table.column_names])
        return table

    def clear(self) -> None:
        """Forget everything (after the file and its dead letters are durable)."""
        self._reset()
