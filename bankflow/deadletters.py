"""The dead-letter store as a person (and `apply`, `status`) sees it: list, show, replay.

The store (`bankflow.lake.deadletter`) keeps every event that could not become a row, whole, with its position and
reason, one JSON-lines file per flushed batch under ``<lake>/<dead_letter>/<table>/``. Here:

- `pending`: what is in the store and not yet replayed, per table (events, files, reasons);
- `replay`: decode the stored events again with the current spec (the table's current shape) into lake files
  whose keys derive from their positions, under a stream of their own (``deadletters.<stream>``), so a second
  replay writes the same keys and the load's ledger loads each once. A file whose events all convert is moved to
  ``<dead_letter>/_replayed/``; one with events that still do not convert keeps exactly those, with their reason.
- `new_since`: the events the store gained since a listing, per table (what one `apply` dead-lettered).

Directories starting with ``_`` are bankflow's own (``_truncates``, ``_replayed``), not tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from bankflow.lake.batch import TableBatch
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table

REPLAYED_DIR = "_replayed"
REPLAY_STREAM_PREFIX = "deadletters."
UNCHANGED_TOAST = "__unchanged_toast__"  # how the built-in engine writes an unchanged TOAST value it could not fill


@dataclass
class TablePending:
    events: int = 0
    files: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"events": self.events, "files": self.files, "reasons": dict(self.reasons.most_common())}


@dataclass
class ReplayOutcome:
    tables: dict[str, dict[str, int]] = field(default_factory=dict)  # table → replayed, still_dead, files_written
    files: list[str] = field(default_factory=list)  # lake files written

    def to_dict(self) -> dict[str, Any]:
        return {"tables": self.tables, "files": self.files,
                "replayed": sum(t["replayed"] for t in self.tables.values()),
                "still_dead": sum(t["still_dead"] for t in self.tables.values())}


class DeadLetters:
    """The dead-letter store of one pipeline (one environment's lake)."""

    def __init__(self, resolved: ResolvedSpec) -> None:
        from bankflow.lake.deadletter import DeadLetterStore
        from bankflow.lake.filesystem import lake_filesystem

        self.resolved = resolved
        self.fs, self.root = lake_filesystem(resolved)
        self.store = DeadLetterStore(self.fs, self.root, resolved.spec.lake.dead_letter)
        self.base = self.store.base

    # ---- reading

    def files(self, table: str | None = None) -> list[str]:
        """Pending dead-letter files (keys), of one table or of all, sorted."""
        if not self.fs.exists(self.base):
            return []
        pattern = f"{self.base}/{table}/*.jsonl" if table else f"{self.base}/*/*.jsonl"
        return sorted(p for p in self.fs.glob(pattern) if not self._relative(p).startswith("_"))

    def _relative(self, key: str) -> str:
        """`<table>/<file>` of a key in the store."""
        return key[len(self.base) + 1:]

    def _table_of(self, key: str) -> str:
        return self._relative(key).split("/", 1)[0]

    def records(self, key: str) -> list[dict[str, Any]]:
        with self.fs.open(key, "rb") as handle:
            return [orjson.loads(line) for line in handle.read().splitlines() if line.strip()]

    def iter_records(self, table: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        for key in self.files(table):
            for record in self.records(key):
                yield key, record

    def pending(self, table: str | None = None) -> dict[str, TablePending]:
        out: dict[str, TablePending] = {}
        for key in self.files(table):
            name = self._table_of(key)
            entry = out.setdefault(name, TablePending())
            entry.files += 1
            for record in self.records(key):
                entry.events += 1
                entry.reasons[_reason_kind(str(record.get("reason", "")))] += 1
        return out

    def keys(self) -> set[str]:
        return set(self.files())

    def new_since(self, before: set[str]) -> dict[str, int]:
        """Events per table in files that were not in the store at `before` (a listing by `keys`). A file
        rewritten under the same key (a replay after a crash) is not new: its events were counted once."""
        counts: Counter[str] = Counter()
        for key in self.files():
            if key not in before:
                counts[self._table_of(key)] += len(self.records(key))
        return dict(counts)

    # ---- replay

    def replay(self, table: str | None = None) -> ReplayOutcome:
        from bankflow.lake.schema_history import SchemaHistory, with_columns
        from bankflow.lake.writer import LakeWriter

        spec = self.resolved.spec
        writer = LakeWriter(self.fs, self.root, spec.lake)
        history = SchemaHistory(self.fs, self.root)
        outcome = ReplayOutcome()
        for declared in spec.tables:
            if table is not None and declared.name != table:
                continue
            record = history.record_at(declared.name)  # the table's current shape and lake names
            shape = with_columns(declared, record.columns) if record else declared
            lake_names = dict(record.lake_names) if record else {}
            figures = outcome.tables.setdefault(declared.name, {"replayed": 0, "still_dead": 0, "files_written": 0})
            for key in self.files(declared.name):
                self._replay_file(writer, shape, lake_names, key, figures, outcome)
        return outcome

    def _replay_file(self, writer: Any, shape: Table, lake_names: dict[str, str], key: str,
                     figures: dict[str, int], outcome: ReplayOutcome) -> None:
        from bankflow.lake.batch import DeadLetter, TableBatch
        from bankflow.lake.positions import parse_file_name

        spec = self.resolved.spec
        parsed = parse_file_name(key.rsplit("/", 1)[-1])
        stream = parsed[0] if parsed else shape.name
        if not stream.startswith(REPLAY_STREAM_PREFIX):
            stream = REPLAY_STREAM_PREFIX + stream
        batch = TableBatch(shape, stream=stream, schema=spec.source.schema_name, topic=spec.topic_for(shape),
                           lake_names=lake_names)
        kept: list[DeadLetter] = []
        records = self.records(key)
        for item in sorted(records, key=lambda r: _position(r["position"])):
            position = _position(item["position"])
            if _append(batch, item.get("event"), position) is None:
                kept.append(DeadLetter(shape.name, position, str(item.get("reason", "")), item.get("event")))
        if batch.empty:
            return
        file_key = writer.key_for(batch)
        arrow = batch.to_arrow(file_key)
        kept += batch.dead_letters  # converted again and still not convertible: the reason of this attempt
        if arrow.num_rows:
            writer.write_table(file_key, arrow)
            outcome.files.append(file_key)
            figures["files_written"] += 1
        figures["replayed"] += arrow.num_rows
        figures["still_dead"] += len(kept)
        if kept:
            from bankflow.lake.atomic import put_atomic
            from bankflow.lake.deadletter import dead_letter_line

            put_atomic(self.fs, key, b"".join(dead_letter_line(r) for r in sorted(kept, key=lambda r: r.position)))
        else:
            done = f"{self.base}/{REPLAYED_DIR}/{self._relative(key)}"
            self.fs.makedirs(done.rsplit("/", 1)[0], exist_ok=True)
            self.fs.mv(key, done)


def _reason_kind(reason: str) -> str:
    """A reason without the values in it, to group by: up to the first colon or parenthesis."""
    for mark in (":", "("):
        if mark in reason:
            reason = reason.split(mark, 1)[0]
    return reason.strip() or "unknown"


def _position(data: Any) -> Any:
    from bankflow.lake.positions import KafkaPosition, lsn_position_of_json

    if isinstance(data, dict):
        if "commit_lsn_int" in data:
            return lsn_position_of_json(data)
        if "offset" in data:
            return KafkaPosition(int(data["partition"]), int(data["offset"]))
    raise ValueError(f"not a position: {data!r}")


def _append(batch: TableBatch, event: Any, position: Any) -> bool | None:
    """One stored event into the batch the way its engine first tried it: True a row, False a dead letter of
    the batch (with this attempt's reason), None when it cannot even be tried (it stays as it was)."""
    if not isinstance(event, dict):
        return None  # malformed JSON or a non-object: nothing a spec change can fix
    source = event.get("source")
    if isinstance(source, dict) and "commit_lsn" in source:  # the built-in engine's text values
        op = event.get("op")
        image = event.get("before") if op == "d" else event.get("after")
        if op not in ("c", "u", "d", "r") or not isinstance(image, dict) or UNCHANGED_TOAST in image.values():
            return None
        if any(name not in batch.names for name in image):
            return None
        values = [None if image.get(n) is None else str(image[n]).encode() for n in batch.names]
        batch.append_text_row(op, values, position, source.get("txId"), source.get("ts_us"))
        return True
    try:
        return batch.append_debezium(event, position)
    except Exception:  # a shape the current spec does not take either: it stays a dead letter
        return None
