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


def key_texts(table: pa.Table, keys: list[str]) -> list[str]:
    """One string per row for its primary key alone (as `identities` joins it)."""
    parts: list[Any] = []
    for name in keys:
        text = pc.fill_null(pc.cast(table.column(name), pa.string()), "\x00null")
        parts += [pc.cast(pc.utf8_length(text), pa.string()), text]
    joined = pc.binary_join_element_wise(*parts, "\x1f") if len(parts) > 1 else parts[0]
    return list(joined.to_pylist())


def _snapshot_rows(table: pa.Table, keys: list[str]) -> dict[str, int]:
    """Key → `_lsn` of the table's snapshot (op r) rows, the last one of a key winning."""
    ops = table.column("_op")
    if not pc.any(pc.equal(ops, "r")).as_py():
        return {}
    rows = table.filter(pc.equal(ops, "r"))
    return dict(zip(key_texts(rows, keys), rows.column("_lsn").to_pylist(), strict=True))


class ResentFilter:
    """The identities of one partition's recent rows, and the filter for the next batch.

    It also keeps a snapshot row below the changes that came after it. Debezium emits a snapshot chunk at the
    close of its window (an incremental snapshot) or at the snapshot's LSN, and a transaction that changed a key
    before that point but committed after it comes later in the partition with a lower change LSN; ordered by
    `_lsn`, the older snapshot row would win. Such a change gets `_lsn` = the snapshot row's + 1: after it, as
    its commit was, and still before the key's next change (which waited for that commit)."""

    def __init__(self, keys: list[str], window_rows: int = WINDOW_ROWS) -> None:
        self.keys = keys
        self.window_rows = window_rows
        self.files: deque[tuple[pa.Array, dict[str, int]]] = deque()
        self.rows = 0
        self._seen: pa.Array | None = None
        self._snapshots: dict[str, int] = {}
        self._pending: tuple[pa.Array, dict[str, int]] | None = None
        self.reordered = 0

    def load(self, fs: Any, files: list[LakeFile], start: int) -> None:
        """The Parquet files of this partition that begin before offset `start` (sorted by position)."""
        import pyarrow.parquet as pq

        before = [f for f in files if f.key.endswith(".parquet") and f.first.offset < start]
        picked: list[tuple[pa.Array, dict[str, int]]] = []
        rows = 0
        for file in reversed(before):
            if rows >= self.window_rows:
                break
            with fs.open(file.key, "rb") as handle:
                part = pq.read_table(handle, columns=[*self.keys, "_lsn", "_op"])
            picked.append((identities(part, self.keys), _snapshot_rows(part, self.keys)))
            rows += part.num_rows
        for entry in reversed(picked):
            self._push(entry)

    def filter(self, table: pa.Table) -> tuple[pa.Table, int]:
        """The batch without the rows seen before (in the window or earlier in the batch), snapshot rows kept
        below later changes; and how many rows were dropped."""
        if table.num_rows == 0:
            self._pending = None
            return table, 0
        ids = identities(table, self.keys)
        keep = pc.invert(pc.is_in(ids, value_set=self._seen)) if self._seen is not None and len(self._seen) else None
        index = pa.array(range(len(ids)), pa.int64())
        grouped = pa.table({"id": ids, "i": index}).group_by("id", use_threads=False).aggregate([("i", "min")])
        if grouped.num_rows < len(ids):  # a copy inside the batch: keep each identity's first row
            first = pc.is_in(index, value_set=grouped.column("i_min"))
            keep = first if keep is None else pc.and_(keep, first)
        if keep is None or pc.all(keep).as_py():
            kept, kept_ids = table, ids
        else:
            kept, kept_ids = table.filter(keep), ids.filter(keep)
        kept, snapshots = self._order_after_snapshots(kept)
        self._pending = (kept_ids, snapshots)  # identities as Debezium sent them (a copy has the original _lsn)
        return kept, table.num_rows - kept.num_rows

    def _order_after_snapshots(self, table: pa.Table) -> tuple[pa.Table, dict[str, int]]:
        ops = table.column("_op")
        is_snapshot = pc.equal(ops, "r")
        if not self._snapshots and not pc.any(is_snapshot).as_py():
            return table, {}
        keys = key_texts(table, self.keys)
        snapshot_at = pc.indices_nonzero(is_snapshot).to_pylist()
        watched = set(self._snapshots) | {keys[i] for i in snapshot_at}
        candidates = [i for i, k in enumerate(keys) if k in watched]
        known = self._snapshots
        lsns = table.column("_lsn")
        ops_list = ops.to_pylist()
        working = dict(known)
        mine: dict[str, int] = {}
        changed: dict[int, int] = {}
        for i in candidates:
            key, lsn = keys[i], lsns[i].as_py()
            if ops_list[i] == "r":
                working[key] = mine[key] = lsn
                continue
            floor = working.get(key)
            if floor is not None and lsn <= floor:
                changed[i] = floor + 1
        if changed:
            values = lsns.to_pylist()
            for i, lsn in changed.items():
                values[i] = lsn
            column = table.schema.get_field_index("_lsn")
            table = table.set_column(column, table.schema.field(column), pa.array(values, pa.int64()))
            self.reordered += len(changed)
            log.info("%d change(s) made before a snapshot row of their key and committed after it: ordered after "
                     "it (_lsn = the snapshot row's + 1)", len(changed))
        return table, mine

    def written(self) -> None:
        """The batch last filtered became a durable file: its rows join the window."""
        pending, self._pending = self._pending, None
        if pending is not None and len(pending[0]):
            self._push(pending)

    def _push(self, entry: tuple[pa.Array, dict[str, int]]) -> None:
        self.files.append(entry)
        self.rows += len(entry[0])
        trimmed = False
        while len(self.files) > 1 and self.rows - len(self.files[0][0]) >= self.window_rows:
            old = self.files.popleft()
            self.rows -= len(old[0])
            trimmed = trimmed or bool(old[1])
        self._seen = pa.concat_arrays([ids for ids, _ in self.files]) if self.files else None
        if trimmed:
            self._snapshots = {}
            for _ids, snapshots in self.files:
                self._snapshots.update(snapshots)
        else:
            self._snapshots.update(entry[1])
