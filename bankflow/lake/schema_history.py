"""The schema history of each table: every source schema change the stream accepted, kept in the lake.

A table's shape starts as the spec declares it. Under `schema_changes: evolve` the CDC engine records each change
it sees in the source (a column added, dropped or retyped) as one JSON record keyed by the position of the first
event in the new shape, *before* it writes any file in that shape:

    <lake>/_schema/<table>/<position>.json   {"table", "position", "commit_ts_us", "changes": […], "columns": […]}

Three readers: the engine (the shape in effect where the stream resumes), the load stage (raw gains every column
any shape had, with its latest type) and `status`/the source contract (a difference the history accepted is not
a contract violation). Keyed by position and written atomically, so a replay after a crash rewrites the same
record. Dropped columns stay in raw (older rows keep their values); the record says from where on they are
absent, instead of the rows pretending the column was set to NULL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from bankflow.lake.atomic import put_atomic
from bankflow.lake.positions import LsnPosition, format_span, lsn_text

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table

ChangeKind = Literal["added", "dropped", "retyped"]
SCHEMA_DIR = "_schema"


@dataclass(frozen=True)
class SchemaChange:
    kind: ChangeKind
    column: str
    old_type: str | None = None
    new_type: str | None = None

    def describe(self) -> str:
        if self.kind == "added":
            return f"column {self.column!r} added ({self.new_type})"
        if self.kind == "dropped":
            return f"column {self.column!r} dropped (was {self.old_type})"
        return f"column {self.column!r} changed type {self.old_type} -> {self.new_type}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "column": self.column, "old_type": self.old_type, "new_type": self.new_type}


@dataclass(frozen=True)
class ShapeRecord:
    """One accepted change: the table's columns (name, type, nullable) from `position` on."""

    table: str
    position: LsnPosition
    commit_ts_us: int | None
    changes: tuple[SchemaChange, ...]
    columns: tuple[tuple[str, str, bool], ...]

    def to_json(self) -> bytes:
        return orjson.dumps({
            "table": self.table, "position": {"commit": self.position.commit, "lsn": self.position.lsn},
            "lsn": lsn_text(self.position.lsn), "commit_ts_us": self.commit_ts_us,
            "changes": [c.to_json() for c in self.changes],
            "columns": [{"name": n, "type": t, "nullable": nullable} for n, t, nullable in self.columns]},
            option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShapeRecord:
        position = LsnPosition(int(data["position"]["commit"]), int(data["position"]["lsn"]))
        return cls(data["table"], position, data.get("commit_ts_us"),
                   tuple(SchemaChange(c["kind"], c["column"], c.get("old_type"), c.get("new_type"))
                         for c in data["changes"]),
                   tuple((c["name"], c["type"], bool(c["nullable"])) for c in data["columns"]))


def columns_of(table: Table) -> tuple[tuple[str, str, bool], ...]:
    return tuple((c.name, c.type, c.nullable) for c in table.columns)


def with_columns(table: Table, columns: tuple[tuple[str, str, bool], ...]) -> Table:
    """The spec table with another column list (keys, topic and raw name unchanged)."""
    from bankflow.spec.models import Column

    declared = {c.name: c for c in table.columns}
    new = []
    for name, type_, nullable in columns:
        known = declared.get(name)
        if known is not None and known.type == type_:
            new.append(known)
        else:
            new.append(Column(name=name, type=type_, nullable=nullable))
    return table.model_copy(update={"columns": new})


class SchemaHistory:
    """The records of every table of one lake."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.base = f"{root.rstrip('/')}/{SCHEMA_DIR}"

    @classmethod
    def of(cls, resolved: ResolvedSpec) -> SchemaHistory:
        from bankflow.lake.filesystem import lake_filesystem

        fs, root = lake_filesystem(resolved)
        return cls(fs, root)

    def key_for(self, table: str, position: LsnPosition) -> str:
        return f"{self.base}/{table}/{format_span(position, position).split('-')[0]}.json"

    def write(self, record: ShapeRecord) -> str:
        key = self.key_for(record.table, record.position)
        put_atomic(self.fs, key, record.to_json())
        return key

    def records(self, table: str) -> list[ShapeRecord]:
        """Every record of `table`, oldest first."""
        directory = f"{self.base}/{table}"
        if not self.fs.exists(directory):
            return []
        out = []
        for path in sorted(self.fs.glob(f"{directory}/*.json")):
            with self.fs.open(path, "rb") as handle:
                out.append(ShapeRecord.from_json(orjson.loads(handle.read())))
        return sorted(out, key=lambda r: r.position)

    def shape_at(self, table: Table, position: int) -> Table:
        """The table's shape for events after the stream position (commit LSN) `position`: the spec's, or
        that of the last record at or before it. Records past it belong to a crashed run and come again."""
        current = [r for r in self.records(table.name) if r.position.commit <= position]
        return with_columns(table, current[-1].columns) if current else table

    def current_shape(self, table: Table) -> Table:
        """The shape of the table's latest record (the spec's without one)."""
        records = self.records(table.name)
        return with_columns(table, records[-1].columns) if records else table

    def raw_shape(self, table: Table) -> Table:
        """Every column any shape of the table had, each with its latest type: what raw must hold."""
        records = self.records(table.name)
        if not records:
            return table
        columns: dict[str, tuple[str, str, bool]] = {c[0]: c for c in columns_of(table)}
        for record in records:
            for column in record.columns:
                columns[column[0]] = (column[0], column[1], True)
        return with_columns(table, tuple(columns.values()))

    def accepted(self, table: Table) -> list[ShapeRecord]:
        return self.records(table.name)


def shape_changes(shape: Table, relation: list[tuple[str, str | None]],
                  live_columns: set[str]) -> tuple[list[SchemaChange], list[str]]:
    """The differences between the shape the stream is in and a relation as the source now announces it.

    `relation`: (name, Postgres type as the spec writes it, or None when bankflow cannot carry it). A shape
    column the relation lacks is a drop only when the live table lacks it too; otherwise the event predates the
    column (it was added after) and its value is absent, which is not a change. Returns (changes, columns of
    the relation whose type cannot be carried).
    """
    declared = {c.name: c.type for c in shape.columns}
    changes: list[SchemaChange] = []
    uncarried: list[str] = []
    for name, type_ in relation:
        if type_ is None:
            uncarried.append(name)
        elif name not in declared:
            changes.append(SchemaChange("added", name, None, type_))
        elif declared[name] != type_:
            changes.append(SchemaChange("retyped", name, declared[name], type_))
    present = {name for name, _ in relation}
    for name, type_ in declared.items():
        if name not in present and name not in live_columns:
            changes.append(SchemaChange("dropped", name, type_, None))
    return changes, uncarried


def apply_changes(shape: Table, relation: list[tuple[str, str | None]],
                  changes: list[SchemaChange]) -> tuple[tuple[str, str, bool], ...]:
    """The new column list: the relation's order, keeping nullability of columns the shape knew; a column of the
    shape that the relation lacks but the live table has (a newer column) stays."""
    if not changes:
        return columns_of(shape)
    known = {c.name: c for c in shape.columns}
    dropped = {c.column for c in changes if c.kind == "dropped"}
    present = {name for name, _ in relation}
    out: list[tuple[str, str, bool]] = []
    for name, type_ in relation:
        if type_ is None:
            continue
        column = known.get(name)
        out.append((name, type_, column.nullable if column is not None else True))
    out += [(c.name, c.type, c.nullable) for c in shape.columns if c.name not in present and c.name not in dropped]
    return tuple(out)


def evolved_spec(resolved: ResolvedSpec) -> ResolvedSpec:
    """The spec with each table in the shape the stream has now: the spec's columns plus what the schema history
    accepted (for `verify` and the source contract, which compare with the source as it is today)."""
    import dataclasses

    history = SchemaHistory.of(resolved)
    tables = []
    changed = False
    for table in resolved.spec.tables:
        records = history.records(table.name)
        if records:
            tables.append(with_columns(table, records[-1].columns))
            changed = True
        else:
            tables.append(table)
    if not changed:
        return resolved
    return dataclasses.replace(resolved, spec=resolved.spec.model_copy(update={"tables": tables}))
