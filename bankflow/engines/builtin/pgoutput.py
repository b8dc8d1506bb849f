"""Decoder of the pgoutput logical replication protocol, version 1.

Messages (https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html): Begin, Commit,
Origin, Relation, Type, Insert, Update (with an optional 'K' key or 'O' old tuple), Delete, Truncate and
logical decoding Messages. Tuple values are 'n' (NULL), 'u' (unchanged TOAST value: not sent) or 't' (text).

Two levels: `decode_message` builds small message objects for everything (Relation, Begin, Update, …); the
stream loop's hot path (`bankflow.engines.builtin.stream`) decodes Insert tuples itself straight into column
lists. Values stay `bytes` (the text form); conversion to Arrow types
happens in bulk in `bankflow.lake.batch`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since the Unix epoch


class _Unchanged:
    """An unchanged TOAST value ('u'): pgoutput did not send it. Never to be written as NULL."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()

_i16 = struct.Struct(">h").unpack_from
_i32 = struct.Struct(">i").unpack_from
_u32 = struct.Struct(">I").unpack_from
_u64 = struct.Struct(">Q").unpack_from
_BEGIN = struct.Struct(">QqI").unpack_from
_COMMIT = struct.Struct(">BQQq").unpack_from


class ProtocolError(ValueError):
    """A message that does not follow pgoutput protocol v1."""


@dataclass(frozen=True)
class RelationColumn:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool  # part of the replica identity (every column with REPLICA IDENTITY FULL)


@dataclass(frozen=True)
class Relation:
    relid: int
    namespace: str
    name: str
    replica_identity: str  # d default, n nothing, f full, i index
    columns: tuple[RelationColumn, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True)
class Begin:
    final_lsn: int  # LSN of the commit record: the transaction's commit LSN
    commit_ts_us: int  # Unix epoch µs
    xid: int


@dataclass(frozen=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int  # end of the commit record: what a client confirms as flushed
    commit_ts_us: int


@dataclass(frozen=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True)
class TypeMessage:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True)
class Insert:
    relid: int
    new: list[Any]


@dataclass(frozen=True)
class Update:
    relid: int
    old_kind: str | None  # 'K' key only, 'O' whole old row (REPLICA IDENTITY FULL), None: not sent
    old: list[Any] | None
    new: list[Any]


@dataclass(frozen=True)
class Delete:
    relid: int
    old_kind: str  # 'K' or 'O'
    old: list[Any]


@dataclass(frozen=True)
class Truncate:
    options: int  # 1 CASCADE, 2 RESTART IDENTITY
    relids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        return bool(self.options & 1)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & 2)


@dataclass(frozen=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode(), end + 1


def read_tuple(buf: bytes, pos: int) -> tuple[list[Any], int]:
    """TupleData at `pos` → (values: bytes text | None | UNCHANGED, position after the tuple)."""
    (natts,) = _i16(buf, pos)
    pos += 2
    values: list[Any] = []
    append = values.append
    for _ in range(natts):
        kind = buf[pos]
        if kind == 116:  # 't'
            (length,) = _i32(buf, pos + 1)
            pos += 5
            append(buf[pos:pos + length])
            pos += length
        elif kind == 110:  # 'n'
            append(None)
            pos += 1
        elif kind == 117:  # 'u'
            append(UNCHANGED)
            pos += 1
        elif kind == 98:  # 'b' binary (protocol ≥ 2 with binary 'true'; not requested by bankflow)
            raise ProtocolError("binary tuple data is not supported (request proto_version 1, binary off)")
        else:
            raise ProtocolError(f"unknown tuple value kind {chr(kind)!r} at byte {pos}")
    return values, pos


def _begin(payload: bytes) -> Begin:
    final_lsn, ts, xid = _BEGIN(payload, 1)
    return Begin(final_lsn, ts + PG_EPOCH_US, xid)


def _commit(payload: bytes) -> Commit:
    flags, commit_lsn, end_lsn, ts = _COMMIT(payload, 1)
    return Commit(flags, commit_lsn, end_lsn, ts + PG_EPOCH_US)


def _insert(payload: bytes) -> Insert:
    (relid,) = _u32(payload, 1)
    if payload[5] != 78:
        raise ProtocolError("Insert without 'N' tuple")
    new, _ = read_tuple(payload, 6)
    return Insert(relid, new)


def _update(payload: bytes) -> Update:
    (relid,) = _u32(payload, 1)
    pos = 5
    old_kind = None
    old = None
    if payload[pos] in (75, 79):  # 'K' | 'O'
        old_kind = chr(payload[pos])
        old, pos = read_tuple(payload, pos + 1)
    if payload[pos] != 78:
        raise ProtocolError("Update without 'N' tuple")
    new, _ = read_tuple(payload, pos + 1)
    return Update(relid, old_kind, old, new)


def _delete(payload: bytes) -> Delete:
    (relid,) = _u32(payload, 1)
    old_kind = chr(payload[5])
    if old_kind not in ("K", "O"):
        raise ProtocolError(f"Delete with old tuple kind {old_kind!r}")
    old, _ = read_tuple(payload, 6)
    return Delete(relid, old_kind, old)


def _relation(payload: bytes) -> Relation:
    (relid,) = _u32(payload, 1)
    namespace, pos = _cstring(payload, 5)
    name, pos = _cstring(payload, pos)
    identity = chr(payload[pos])
    (ncols,) = _i16(payload, pos + 1)
    pos += 3
    columns = []
    for _ in range(ncols):
        flags = payload[pos]
        column, pos = _cstring(payload, pos + 1)
        type_oid, typmod = struct.unpack_from(">Ii", payload, pos)
        pos += 8
        columns.append(RelationColumn(column, type_oid, typmod, bool(flags & 1)))
    return Relation(relid, namespace or "pg_catalog", name, identity, tuple(columns))


def _truncate(payload: bytes) -> Truncate:
    (nrels,) = _i32(payload, 1)
    options = payload[5]
    relids = struct.unpack_from(f">{nrels}I", payload, 6)
    return Truncate(options, tuple(relids))


def _origin(payload: bytes) -> Origin:
    (commit_lsn,) = _u64(payload, 1)
    name, _ = _cstring(payload, 9)
    return Origin(commit_lsn, name)


def _type(payload: bytes) -> TypeMessage:
    (oid,) = _u32(payload, 1)
    namespace, pos = _cstring(payload, 5)
    name, _ = _cstring(payload, pos)
    return TypeMessage(oid, namespace, name)


def _logical_message(payload: bytes) -> LogicalMessage:
    transactional = bool(payload[1])
    (lsn,) = _u64(payload, 2)
    prefix, pos = _cstring(payload, 10)
    (length,) = _i32(payload, pos)
    return LogicalMessage(transactional, lsn, prefix, payload[pos + 4:pos + 4 + length])


_DECODERS: dict[int, Callable[[bytes], Any]] = {
    ord("B"): _begin, ord("C"): _commit, ord("I"): _insert, ord("U"): _update, ord("D"): _delete,
    ord("R"): _relation, ord("T"): _truncate, ord("O"): _origin, ord("Y"): _type, ord("M"): _logical_message,
}


def decode_message(payload: bytes) -> Any:
    """One pgoutput message → Begin | Commit | Origin | Relation | TypeMessage | Insert | Update | Delete |
    Truncate | LogicalMessage."""
    decoder = _DECODERS.get(payload[0])
    if decoder is None:
        raise ProtocolError(f"unknown pgoutput message type {chr(payload[0])!r}")
    return decoder(payload)


def resolve_unchanged(new: list[Any], old: list[Any] | None, old_kind: str | None,
                      names: tuple[str, ...]) -> tuple[list[Any], str | None]:
    """Replace unchanged-TOAST markers in an update's new tuple with the old tuple's values.

    Only a whole old row ('O', REPLICA IDENTITY FULL) carries them; a key-only or missing old tuple cannot,
    and then the reason is returned so the caller dead-letters the event instead of writing NULL.
    """
    if UNCHANGED not in new:
        return new, None
    resolved = list(new)
    for i, value in enumerate(resolved):
        if value is UNCHANGED:
            if old_kind == "O" and old is not None and i < len(old) and old[i] is not UNCHANGED:
                resolved[i] = old[i]
            else:
                column = names[i] if i < len(names) else f"#{i}"
                return new, (f"unchanged TOAST value for column {column!r} and no old row to take it from "
                             "(set REPLICA IDENTITY FULL on the table)")
    return resolved, None
