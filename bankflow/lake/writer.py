"""Parquet files in the lake, keyed by source position so a retry rewrites the same key.

Key: ``<root>/<layout filled>/<stream>-<span>.parquet`` where span is the fixed-width position range of the
first and last event in the file (`bankflow.lake.positions.format_span`). `{date}` is the UTC date of the
first event's commit time, `{partition}` the Kafka partition (0 for the built-in reader): both come from the
data, never from the wall clock, so a replay lands in the same place.

Writes are atomic and durable (`bankflow.lake.atomic.put_atomic`): a reader never sees half a file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bankflow.lake.atomic import put_atomic
from bankflow.lake.batch import TableBatch
from bankflow.lake.deadletter import DeadLetterStore
from bankflow.lake.positions import KafkaPosition, format_span, parse_file_name
from bankflow.spec.models import Lake


def _key_date(ts: int | None) -> str:
    """`{date}`: the UTC date of a commit time in µs, or "unknown" for none or one no date can name (the
    decoders dead-letter such events; this keeps a key from ever failing on one)."""
    if ts is None:
        return "unknown"
    try:
        return datetime.fromtimestamp(ts / 1_000_000, tz=timezone.utc).date().isoformat()
    except (OverflowError, ValueError, OSError):
        return "unknown"


@dataclass(frozen=True)
class LakeFile:
    key: str
    stream: str
    first: Any
    last: Any


@dataclass(frozen=True)
class WrittenFile:
    """What one flush produced. `key` is None when every event of the batch was dead-lettered."""

    key: str | None
    rows: int
    bytes: int
    dead_letters: int
    dropped: int = 0  # rows the batch's row filter took out (changes the lake already has)


class LakeWriter:
    def __init__(self, fs: Any, root: str, lake: Lake) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.lake = lake
        self.dead_letters = DeadLetterStore(fs, self.root, lake.dead_letter)
        self.compression = None if lake.compression == "none" else lake.compression

    # ---- keys

    def directory(self, *, table: str, schema: str, topic: str, date: str = "*", partition: str = "*") -> str:
        filled = self.lake.layout.format(table=table, schema=schema, topic=topic, date=date, partition=partition)
        return f"{self.root}/{filled}"

    def key_for(self, batch: TableBatch) -> str:
        date = _key_date(batch.first_source_ts_us)
        first, last = batch.first_position, batch.last_position
        partition = str(first.partition) if isinstance(first, KafkaPosition) else "0"
        directory = self.directory(table=batch.table.name, schema=batch.schema_name, topic=batch.topic,
                                   date=date, partition=partition)
        return f"{directory}/{batch.stream}-{format_span(first, last)}.parquet"

    # ---- writing

    def write_batch(self, batch: TableBatch,
                    row_filter: Callable[[pa.Table], tuple[pa.Table, int]] | None = None,
                    metadata: dict[bytes, bytes] | None = None) -> WrittenFile:
        """Write the batch's Parquet file and its dead letters, durably; then clear the batch. `row_filter`
        takes rows out first (and says how many): copies of changes already in the lake; `metadata` goes in
        the file's key-value metadata."""
        first, last = batch.first_position, batch.last_position
        key = self.key_for(batch)
        table = batch.to_arrow(key)
        dropped = 0
        if row_filter is not None:
            table, dropped = row_filter(table)
        if metadata:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        size = 0
        written_key: str | None = None
        if table.num_rows:
            size = self.write_table(key, table)
            written_key = key
        dead = self.dead_letters.write(batch.table.name, batch.stream, first, last, batch.dead_letters)
        rows = table.num_rows
        batch.clear()
        return WrittenFile(written_key, rows, size, dead, dropped)

    def write_table(self, key: str, table: pa.Table) -> int:
        """One Parquet file, written atomically. Dictionary encoding only for text columns: on numbers, decimals
        and timestamps (mostly distinct in a change log) it tripled the write time and made files larger."""
        sink = pa.BufferOutputStream()
        dictionary = [f.name for f in table.schema if pa.types.is_string(f.type)]
        pq.write_table(table, sink, compression=self.compression, use_dictionary=dictionary)
        data = sink.getvalue().to_pybytes()
        put_atomic(self.fs, key, data)
        return len(data)

    # ---- reading back

    def list_files(self, *, stream: str, table: str, schema: str = "public",
                   topic: str | None = None) -> list[LakeFile]:
        """Files of one stream, sorted by position (orphan detection, tests)."""
        pattern = f"{self.directory(table=table, schema=schema, topic=topic or table)}/{stream}-*.parquet"
        return sorted(self._glob_stream(pattern, stream), key=lambda f: (f.first, f.last))

    def list_batches(self, *, stream: str, table: str, schema: str = "public",
                     topic: str | None = None) -> list[LakeFile]:
        """Every batch of one stream that reached the lake, sorted by position: its Parquet file, or, for a batch
        whose events all became dead letters, its dead-letter file. A replay must reproduce both kinds of key."""
        files = self.list_files(stream=stream, table=table, schema=schema, topic=topic)
        spans = {(f.first, f.last) for f in files}
        files += [f for f in self._glob_stream(f"{self.dead_letters.base}/{table}/{stream}-*.jsonl", stream)
                  if (f.first, f.last) not in spans]
        return sorted(files, key=lambda f: (f.first, f.last))

    def _glob_stream(self, pattern: str, stream: str) -> list[LakeFile]:
        """The files matching a glob whose names parse as batches of `stream` (another stream's prefix may match)."""
        found = []
        for path in self.fs.glob(pattern):
            parsed = parse_file_name(path.rsplit("/", 1)[-1])
            if parsed and parsed[0] == stream:
                found.append(LakeFile(path, stream, parsed[1], parsed[2]))
        return found

    def delete(self, key: str) -> None:
        if self.fs.exists(key):
            self.fs.rm(key)
