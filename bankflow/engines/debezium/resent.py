"""Events Debezium sends twice, dropped before they reach the lake.

Kafka Connect commits a source connector's offsets every `offset.flush.interval.ms`; a worker killed in between
restarts from the last committed offset and Debezium produces again what it had already produced (at-least-once).
Kafka then holds those changes twice, at different offsets, and exactly-once per offset would put both copies
in the lake and in raw.

A change is identified by what it is, not by where Kafka put it: its primary key, its `_lsn` and its op. No two
changes share all three (one WAL record changes a key once; a key change is a delete of the old key and a create
of the new one; snapshot rows of one key differ in `_lsn` across snapshots), and a copy Debezium sends again has
all three equal. Within a partition (the key decides it) the copies come after the originals, within the span
Connect had not committed: far less than `window_rows` rows later.

`ResentFilter` keeps, per partition, the identities of the rows of the most recent lake files of that partition
(whole files, newest first, until they hold `window_rows` rows) and drops a row whose identity is among them or
earlier in its own batch. The set is a function of the files before a batch, so a replay after a crash (which
loads the files before the committed offset, then reproduces the orphans in order) drops exactly what the first
run dropped and rewrites every key byte for byte.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from bankflow.lake.writer import LakeFile

log = logging.getLogger(__name__)

WINDOW_ROWS = 200_000


def identities(table: pa.Table, keys: list[str]) -> pa.Array:
    """One string per row: the key columns, `_lsn` and `_op`, joined with a separator no value holds (\\x1f,
    with each value's length in front so that no two different rows join to the same text)."""
    parts: list[Any] = []
    for name in [*keys, "_lsn", "_op"]:
        text = pc.cast(table.column(name), pa.string())
        text = pc.fill_null(text, "\x00null")
        parts += [pc.cast(pc.utf8_length(text), pa.string()), text]
    joined = pc.binary_join_element_wise(*parts, "\x1f")
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


class ResentFilter:
    """The identities of one partition's recent rows, and the filter for the next batch."""

    def __init__(self, keys: list[str], window_rows: int = WINDOW_ROWS) -> None:
        self.keys = keys
        self.window_rows = window_rows
        self.files: deque[pa.Array] = deque()
        self.rows = 0
        self._seen: pa.Array | None = None
        self._pending: pa.Table | None = None

    def load(self, fs: Any, files: list[LakeFile], start: int) -> None:
        """The Parquet files of this partition that begin before offset `start` (sorted by position)."""
        import pyarrow.parquet as pq

        before = [f for f in files if f.key.endswith(".parquet") and f.first.offset < start]
        picked: list[pa.Array] = []
        rows = 0
        for file in reversed(before):
            if rows >= self.window_rows:
                break
            with fs.open(file.key, "rb") as handle:
                part = pq.read_table(handle, columns=[*self.keys, "_lsn", "_op"])
            picked.append(identities(part, self.keys))
            rows += part.num_rows
        for ids in reversed(picked):
            self._push(ids)

    def filter(self, table: pa.Table) -> tuple[pa.Table, int]:
        """The batch without the rows seen before (in the window or earlier in the batch); how many dropped."""
        if table.num_rows == 0:
            return table, 0
        ids = identities(table, self.keys)
        keep = pc.invert(pc.is_in(ids, value_set=self._seen)) if self._seen is not None and len(self._seen) else None
        index = pa.array(range(len(ids)), pa.int64())
        grouped = pa.table({"id": ids, "i": index}).group_by("id", use_threads=False).aggregate([("i", "min")])
        if grouped.num_rows < len(ids):  # a copy inside the batch: keep each identity's first row
            first = pc.is_in(index, value_set=grouped.column("i_min"))
            keep = first if keep is None else pc.and_(keep, first)
        kept = table if keep is None or pc.all(keep).as_py() else table.filter(keep)
        self._pending = kept
        return kept, table.num_rows - kept.num_rows

    def written(self) -> None:
        """The batch last filtered became a durable file: its rows join the window."""
        kept, self._pending = self._pending, None
        if kept is not None and kept.num_rows:
            self._push(identities(kept, self.keys))

    def _push(self, ids: pa.Array) -> None:
        self.files.append(ids)
        self.rows += len(ids)
        while len(self.files) > 1 and self.rows - len(self.files[0]) >= self.window_rows:
            self.rows -= len(self.files.popleft())
        self._seen = pa.concat_arrays(list(self.files)) if self.files else None
