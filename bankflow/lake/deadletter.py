"""Dead-letter store: events that could not become rows, kept whole with their position and the reason.

JSON lines under ``<lake>/<lake.dead_letter>/<table>/<stream>-<span>.jsonl``, one file per flushed batch and
keyed by the batch's position range like the Parquet file next to it, so a replay after a crash rewrites the
same file instead of recording the same bad event twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from bankflow.lake.atomic import put_atomic
from bankflow.lake.positions import format_span, position_json


@dataclass(frozen=True)
class DeadLetter:
    """An event that could not become a row: kept whole, with where it came from and why."""

    table: str
    position: Any
    reason: str
    event: Any


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def dead_letter_line(record: DeadLetter) -> bytes:
    """One JSON line. An event JSON cannot hold as it is (a lone surrogate, nesting beyond orjson's 255 levels)
    is kept as its `repr`, with a note: the store never fails on what it is given to keep."""
    body = {"table": record.table, "position": position_json(record.position), "reason": record.reason,
            "event": record.event}
    try:
        return orjson.dumps(body, default=_default, option=orjson.OPT_NON_STR_KEYS) + b"\n"
    except orjson.JSONEncodeError as exc:
        body["event"] = repr(record.event)
        body["event_note"] = f"kept as its Python repr: JSON cannot hold it as it is ({exc})"
        return orjson.dumps(body, default=_default, option=orjson.OPT_NON_STR_KEYS) + b"\n"


class DeadLetterStore:
    def __init__(self, fs: Any, root: str, dead_letter: str = "_dead_letter") -> None:
        self.fs = fs
        self.base = f"{root.rstrip('/')}/{dead_letter.strip('/')}"

    def key_for(self, table: str, stream: str, first: Any, last: Any) -> str:
        return f"{self.base}/{table}/{stream}-{format_span(first, last)}.jsonl"

    def write(self, table: str, stream: str, first: Any, last: Any, records: Iterable[DeadLetter]) -> int:
        """Write the records of one batch (idempotent per position range); returns how many were written."""
        lines = [dead_letter_line(r) for r in sorted(records, key=lambda r: r.position)]
        if not lines:
            return 0
        put_atomic(self.fs, self.key_for(table, stream, first, last), b"".join(lines))
        return len(lines)

    def read_all(self) -> list[dict[str, Any]]:
        """Every record in the store, file by file in key order (to inspect or replay dead letters)."""
        out: list[dict[str, Any]] = []
        if not self.fs.exists(self.base):
            return out
        for path in sorted(self.fs.find(self.base)):
            if path.endswith(".jsonl"):
                with self.fs.open(path, "rb") as handle:
                    out.extend(orjson.loads(line) for line in handle.read().splitlines() if line.strip())
        return out
