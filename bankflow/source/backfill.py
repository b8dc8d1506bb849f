"""What both engines share for backfills: which tables the stream covers, and the `--where` of a backfill.

Coverage is kept in the lake, one marker per table (``_bankflow/coverage-<slot>/<table>.json``, `Coverage`):
``covered`` (since which position, and how: the initial snapshot, a backfill, or "stream only" under
snapshot_mode no_data) or ``backfilling`` (a backfill to run or to resume, with its progress). A spec table
without a marker is new to the spec (or re-added: the marker of a table that left the spec is removed when the
stream starts), so `plan` gives it a backfill; `request` writes a ``backfilling`` marker for `bankflow backfill
--table` (optionally with a WHERE condition, `checked_where`). Each engine carries the backfills out its own
way: `bankflow.engines.builtin.backfill` (DBLog watermarks of its own), `bankflow.engines.debezium.backfill`
(Debezium's incremental snapshots).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson

from bankflow.errors import BankflowError
from bankflow.lake.atomic import put_atomic, read_json
from bankflow.spec.loader import ResolvedSpec
from bankflow.spec.models import Table

log = logging.getLogger(__name__)

# snapshot_mode → does a table new to the spec get a backfill
BACKFILL_NEW_TABLES = frozenset({"initial", "when_needed", "always"})


class WhereRefused(BankflowError):
    """A `--where` that is not one boolean expression bankflow can check."""


# ---------------------------------------------------------------- the WHERE condition

def checked_where(where: str) -> str:
    """`where` as sqlglot renders it, once it is known to be one read-only boolean expression (else WhereRefused).

    It is SQL the user writes against their own source; it runs inside the chunk SELECT in a read-only
    transaction. Refused: anything that is not a condition (a statement, `;`, a bare value), and whatever
    `bankflow.sqlguard` refuses in a verify query (functions that write, reach out or change state).
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    from bankflow.sqlguard import QueryRefused, checked_query

    text = where.strip()
    if not text:
        raise WhereRefused("--where is empty: give a condition on the table's columns, e.g. \"id > 100\"")
    try:
        parsed = [s for s in sqlglot.parse(text, read="postgres") if s is not None]
    except SqlglotError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise WhereRefused(f"--where cannot be parsed as a PostgreSQL condition: {detail}") from None
    if len(parsed) != 1:
        raise WhereRefused(f"--where holds {len(parsed)} statements: give one condition (no ';')")
    node = parsed[0]
    inner = node
    while isinstance(inner, exp.Paren):
        inner = inner.this
    boolean = (exp.Predicate, exp.Connector, exp.Not, exp.Boolean, exp.Exists)
    if not isinstance(inner, boolean):
        raise WhereRefused(f"--where is a {inner.key.upper()}, not a boolean condition: give e.g. "
                           "\"created_at >= '2024-01-01'\"")
    rendered = node.sql(dialect="postgres", comments=False)
    try:
        checked_query(f"SELECT 1 WHERE {rendered}", "postgres")
    except QueryRefused as refused:
        raise WhereRefused(f"--where refused: {refused.reason}") from None
    return rendered


# ---------------------------------------------------------------- markers

class Coverage:
    """The per-table coverage markers of one slot in the lake (see the module docstring)."""

    def __init__(self, fs: Any, root: str, slot: str) -> None:
        self.fs = fs
        self.dir = f"{root.rstrip('/')}/_bankflow/coverage-{slot}"

    def path(self, table: str) -> str:
        return f"{self.dir}/{table}.json"

    def read(self, table: str) -> dict[str, Any] | None:
        data: dict[str, Any] | None = read_json(self.fs, self.path(table))
        return data

    def write(self, table: str, data: dict[str, Any]) -> None:
        put_atomic(self.fs, self.path(table), orjson.dumps(data, option=orjson.OPT_INDENT_2))

    def remove(self, table: str) -> None:
        if self.fs.exists(self.path(table)):
            self.fs.rm(self.path(table))

    def tables(self) -> list[str]:
        if not self.fs.exists(self.dir):
            return []
        return sorted(p.rsplit("/", 1)[-1].removesuffix(".json") for p in self.fs.glob(f"{self.dir}/*.json"))

    def clear(self) -> None:
        for table in self.tables():
            self.remove(table)

    def cover_all(self, tables: list[Table], since: int | None, how: str) -> None:
        for table in tables:
            self.write(table.name, covered(table.name, since, how))


def covered(table: str, since: int | None, how: str) -> dict[str, Any]:
    return {"table": table, "state": "covered", "since_lsn": since, "how": how}


def backfilling(table: str, reason: str, where: str | None = None,
                previous: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"table": table, "state": "backfilling", "id": uuid.uuid4().hex, "reason": reason, "where": where,
            "after": None, "chunks": 0, "rows": 0, "pending": None, "first_lsn": None,
            "previous": previous if previous and previous.get("state") == "covered" else None}


def request(coverage: Coverage, table: Table, where: str | None) -> dict[str, Any]:
    """Record an on-demand backfill of `table` (replacing one not finished): the next stream start runs it."""
    current = coverage.read(table.name)
    previous = current if current and current.get("state") == "covered" else (current or {}).get("previous")
    record = backfilling(table.name, "requested", checked_where(where) if where else None, previous)
    coverage.write(table.name, record)
    return record


def plan(resolved: ResolvedSpec, coverage: Coverage, *, fresh_slot: bool, position: int | None,
         has_files: Any, backfill_always: bool = True) -> list[dict[str, Any]]:
    """The backfills to run now (new, re-added, requested, resumed), markers updated to say so.

    A marker of a table the spec no longer has is removed (re-adding it backfills it). `has_files(table)`
    tells a table the lake already has data of, for slots that predate the markers (then such a table is
    taken as covered: it was snapshotted or streamed before markers existed). `backfill_always`: under
    snapshot_mode ``always`` every run backfills every table again (False where the engine snapshots at each
    start itself: Debezium).
    """
    spec = resolved.spec
    mode = spec.cdc.snapshot_mode
    names = {t.name for t in spec.tables}
    known = coverage.tables()
    for name in known:
        if name not in names:
            log.info("table %s left the spec: its coverage marker is removed (adding it back backfills it)", name)
            coverage.remove(name)
    legacy = not known and not fresh_slot
    queue_: list[dict[str, Any]] = []
    for table in spec.tables:
        record = coverage.read(table.name)
        if record is None:
            if legacy and has_files(table):
                record = covered(table.name, None, "assumed (lake data from before coverage markers)")
            elif mode in BACKFILL_NEW_TABLES:
                log.info("table %s is new to the stream: backfilling it while streaming", table.name)
                record = backfilling(table.name, "new to the spec")
            else:
                record = covered(table.name, position, f"stream only (snapshot_mode {mode})")
            coverage.write(table.name, record)
        elif record.get("state") == "covered" and mode == "always" and backfill_always and not fresh_slot:
            record = backfilling(table.name, "snapshot_mode always", previous=record)
            coverage.write(table.name, record)
        if record.get("state") == "backfilling":
            queue_.append(record)
    return queue_


def coverage_status(resolved: ResolvedSpec) -> dict[str, dict[str, Any]]:
    """Per spec table, what its coverage marker says (for `status`): ``covered`` since which LSN and how, or
    ``backfilling`` with its reason and progress (chunks, rows so far), or ``unknown`` (no marker yet: the next
    run backfills it, or streams it only under snapshot_mode no_data)."""
    from bankflow.lake.filesystem import lake_filesystem
    from bankflow.lake.positions import lsn_text

    fs, root = lake_filesystem(resolved)
    coverage = Coverage(fs, root, resolved.spec.cdc.slot)
    result: dict[str, dict[str, Any]] = {}
    for table in resolved.spec.tables:
        record = coverage.read(table.name)
        if record is None:
            result[table.name] = {"state": "unknown"}
        elif record.get("state") == "covered":
            since = record.get("since_lsn")
            result[table.name] = {"state": "covered", "how": record.get("how"),
                                  "since_lsn": lsn_text(since) if isinstance(since, int) else None}
        else:
            result[table.name] = {"state": "backfilling", "reason": record.get("reason"),
                                  "where": record.get("where"), "chunks": record.get("chunks", 0),
                                  "rows": record.get("rows", 0)}
    return result


# ---------------------------------------------------------------- the lake's live keys (the deletes' sweep)

def live_keys(fs: Any, directory: str, primary_key: list[str], *, as_key: Any = None,
              own: Any = None) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """Keys whose latest version in a table's lake files (by `_lsn`, then file key, then row) is not a delete,
    and the keys of the files `own(path)` accepts (a backfill's own files). `as_key` turns each key value into
    the form the caller compares with (the built-in engine's chunks carry text; default: the value itself)."""
    import pyarrow.parquet as pq

    latest: dict[tuple[Any, ...], tuple[int, str, str]] = {}
    owned: set[tuple[Any, ...]] = set()
    for path in sorted(fs.glob(f"{directory}/*.parquet")):
        with fs.open(path, "rb") as handle:
            part = pq.read_table(handle, columns=[*primary_key, "_op", "_lsn"])
        columns = [part.column(k).to_pylist() for k in primary_key]
        if as_key is not None:
            columns = [[as_key(v) for v in column] for column in columns]
        keys = list(zip(*columns, strict=True))
        if own is not None and own(path):
            owned.update(keys)
        for key, op, lsn in zip(keys, part.column("_op").to_pylist(), part.column("_lsn").to_pylist(), strict=True):
            seen = latest.get(key)
            if seen is None or (lsn, path) >= seen[:2]:
                latest[key] = (lsn, path, op)
    return {key for key, (_lsn, _path, op) in latest.items() if op != "d"}, owned
