"""Source positions and how they appear in lake file keys.

A file key carries the position range of the events in the file, fixed width so keys sort in stream order
and a retry of the same range produces the same key (exactly-once into the lake). Two position kinds:

- `LsnPosition(commit, lsn, seq)` for the built-in reader: the commit LSN of the event's transaction, the
  event's own change LSN, and `seq`, the event's index among the events of its table in that transaction
  (from 0). Change LSNs alone are not monotonic in stream order (pgoutput sends whole transactions in commit order, and
  a transaction that began earlier has lower change LSNs), so the commit LSN comes first; within a
  transaction change LSNs do not decrease. They are not unique either: COPY and multi-row INSERT write
  multi-insert WAL records (many rows at one change LSN), and a primary-key change is a delete and a create at
  the update's LSN. `seq` makes a position name exactly one event of a table's stream, and it is
  recomputed identically when the slot sends the transaction again (it always sends whole transactions), so a
  replay cuts and skips exactly (`bankflow.lake.replay`). Snapshot rows and backfill chunks use (consistent
  point or low watermark, row number, 0). Rendered as ``<commit:016X>.<lsn:016X>.<seq:08X>``; keys written
  before `seq` existed (``<commit:016X>.<lsn:016X>``) still parse, with seq 0.
- `KafkaPosition(partition, offset)` for the Kafka consumer: ``p<partition:05d>-<offset:020d>``; a file holds
  one partition, so a span is ``p00003-<start:020d>-<end:020d>``.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple


class LsnPosition(NamedTuple):
    commit: int
    lsn: int
    seq: int = 0  # the event's index among its table's events in the transaction, from 0


class KafkaPosition(NamedTuple):
    partition: int
    offset: int


def lsn_text(lsn: int) -> str:
    """Postgres' own spelling of an LSN, e.g. ``0/16B3A28``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


_MAX_LSN = 2**64 - 1
_MAX_OFFSET = 10**20 - 1  # 20 digits
_MAX_PARTITION = 99_999  # 5 digits
_MAX_INDEX = 2**32 - 1  # 8 hex digits


def _check(name: str, value: Any, high: int) -> None:
    if type(value) is not int or not 0 <= value <= high:
        raise ValueError(f"a position's {name} must be an integer from 0 to {high}, got {value!r}")


def check_position(position: Any) -> None:
    """Raise ValueError unless the position renders in a key that sorts and parses back (fixed width, no sign):
    decoders validate what comes from events before it gets here, so this guards against a bug."""
    if isinstance(position, LsnPosition):
        _check("commit LSN", position.commit, _MAX_LSN)
        _check("LSN", position.lsn, _MAX_LSN)
        _check("index in its transaction", position.seq, _MAX_INDEX)
    elif isinstance(position, KafkaPosition):
        _check("partition", position.partition, _MAX_PARTITION)
        _check("offset", position.offset, _MAX_OFFSET)
    elif type(position) is int:
        _check("LSN", position, _MAX_LSN)


def format_span(first: Any, last: Any) -> str:
    """The fixed-width, sortable text of a position range, as used in file keys."""
    check_position(first)
    check_position(last)
    if isinstance(first, LsnPosition) and isinstance(last, LsnPosition):
        return f"{lsn_position_text(first)}-{lsn_position_text(last)}"
    if isinstance(first, KafkaPosition) and isinstance(last, KafkaPosition):
        if first.partition != last.partition:
            raise ValueError(f"a lake file holds one Kafka partition, got {first} .. {last}")
        return f"p{first.partition:05d}-{first.offset:020d}-{last.offset:020d}"
    if isinstance(first, int) and isinstance(last, int):
        return f"{first:016X}-{last:016X}"
    raise TypeError(f"unsupported position types {type(first).__name__}, {type(last).__name__}")


def lsn_position_text(position: LsnPosition) -> str:
    """One LSN position as it appears in keys: ``<commit:016X>.<lsn:016X>.<seq:08X>``."""
    return f"{position.commit:016X}.{position.lsn:016X}.{position.seq:08X}"


_SPAN_PATTERNS: tuple[tuple[re.Pattern[str], Any], ...] = (
    (re.compile(r"([0-9A-F]{16})\.([0-9A-F]{16})\.([0-9A-F]{8})-([0-9A-F]{16})\.([0-9A-F]{16})\.([0-9A-F]{8})"),
     lambda m: (LsnPosition(int(m[1], 16), int(m[2], 16), int(m[3], 16)),
                LsnPosition(int(m[4], 16), int(m[5], 16), int(m[6], 16)))),
    # keys written before positions carried `seq`: seq 0
    (re.compile(r"([0-9A-F]{16})\.([0-9A-F]{16})-([0-9A-F]{16})\.([0-9A-F]{16})"),
     lambda m: (LsnPosition(int(m[1], 16), int(m[2], 16)), LsnPosition(int(m[3], 16), int(m[4], 16)))),
    (re.compile(r"p(\d{5})-(\d{20})-(\d{20})"),
     lambda m: (KafkaPosition(int(m[1]), int(m[2])), KafkaPosition(int(m[1]), int(m[3])))),
    (re.compile(r"([0-9A-F]{16})-([0-9A-F]{16})"), lambda m: (int(m[1], 16), int(m[2], 16))),
)
SPAN_RE = "|".join("(?:" + p.pattern.replace("(", "(?:") + ")" for p, _ in _SPAN_PATTERNS)


def parse_span(text: str) -> tuple[Any, Any] | None:
    """Inverse of `format_span`; None if the text is not a span."""
    for pattern, build in _SPAN_PATTERNS:
        match = pattern.fullmatch(text)
        if match:
            return build(match)
    return None


_NAME_RE = re.compile(r"^(?P<stream>.+?)-(?P<span>" + SPAN_RE + r")\.(?P<ext>parquet|jsonl)$")


def parse_file_name(name: str) -> tuple[str, Any, Any] | None:
    """``<stream>-<span>.parquet`` → (stream, first, last); None for anything else (temp files, other data)."""
    match = _NAME_RE.match(name)
    if not match:
        return None
    span = parse_span(match["span"])
    if span is None:
        return None
    return match["stream"], span[0], span[1]


def show_position(position: Any) -> str:
    """A position for messages: ``commit 0/16B3A28, LSN 0/16B3A00, event 3 of its table in the transaction``."""
    if isinstance(position, LsnPosition):
        return (f"commit {lsn_text(position.commit)}, LSN {lsn_text(position.lsn)}, event {position.seq} of its "
                "table in the transaction")
    if isinstance(position, KafkaPosition):
        return f"partition {position.partition}, offset {position.offset}"
    return str(position)


def lsn_position_of_json(data: dict[str, Any]) -> LsnPosition:
    """Inverse of `position_json` for an LSN position (records written before `seq` existed: 0)."""
    return LsnPosition(int(data["commit_lsn_int"]), int(data["lsn_int"]), int(data.get("seq", 0)))


def position_json(position: Any) -> Any:
    """A JSON-friendly rendering of a position for dead-letter records and progress reports."""
    if isinstance(position, LsnPosition):
        return {"commit_lsn": lsn_text(position.commit), "lsn": lsn_text(position.lsn),
                "commit_lsn_int": position.commit, "lsn_int": position.lsn, "seq": position.seq}
    if isinstance(position, KafkaPosition):
        return {"partition": position.partition, "offset": position.offset}
    if isinstance(position, int):
        return {"lsn": lsn_text(position), "lsn_int": position}
    return position
