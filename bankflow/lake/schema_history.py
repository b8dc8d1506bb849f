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

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson

from bankflow.lake.atomic import put_atomic, read_json
from bankflow.lake.positions import LsnPosition, format_span, lsn_text

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Column, Table

ChangeKind = Literal["added", "dropped", "retyped"]
ColumnSpec = dict[str, Any]  # a column as the spec writes it: name, type, nullable (+ enum_type, values, carry_as)
SCHEMA_DIR = "_schema"


@dataclass(frozen=True)
class SchemaChange:
    kind: ChangeKind
    column: str
    old_type: str | None = None
    new_type: str | None = None
    # retyped where the warehouse cannot widen raw's column in place: the new raw column its values go to
    raw_column: str | None = None
    old_column: ColumnSpec | None = field(default=None, compare=False)  # the column before (retyped, dropped)
    new_column: ColumnSpec | None = field(default=None, compare=False)  # the column after (added, retyped)

    def describe(self) -> str:
        if self.kind == "added":
            return f"column {self.column!r} added ({self.new_type})"
        if self.kind == "dropped":
            return f"column {self.column!r} dropped (was {self.old_type})"
        text = f"column {self.column!r} changed type {self.old_type} -> {self.new_type}"
        if self.raw_column:
            text += (f"; the warehouse cannot widen raw's column in place, so values from here on go to a new raw "
                     f"column {self.raw_column!r} (the old one keeps the older values)")
        return text

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "column": self.column, "old_type": self.old_type, "new_type": self.new_type,
                "raw_column": self.raw_column, "old_column": self.old_column, "new_column": self.new_column}


def successor_column(column: str, new_type: str) -> str:
    """The raw column a retyped column's values go to when raw cannot widen in place: `price__numeric_20_4`."""
    return f"{column}__{re.sub(r'[^a-z0-9]+', '_', new_type.lower()).strip('_')}"


@dataclass(frozen=True)
class ShapeRecord:
    """One accepted change: the table's columns (name, type, nullable) from `position` on."""

    table: str
    position: LsnPosition
    commit_ts_us: int | None
    changes: tuple[SchemaChange, ...]
    columns: tuple[ColumnSpec, ...]
    # source column → the lake's and raw's name for it from here on (retyped columns raw could not widen)
    lake_names: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps({
            "table": self.table, "position": {"commit": self.position.commit, "lsn": self.position.lsn},
            "lsn": lsn_text(self.position.lsn), "commit_ts_us": self.commit_ts_us,
            "changes": [c.to_json() for c in self.changes],
            "columns": list(self.columns), "lake_names": self.lake_names}, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShapeRecord:
        position = LsnPosition(int(data["position"]["commit"]), int(data["position"]["lsn"]))
        return cls(data["table"], position, data.get("commit_ts_us"),
                   tuple(SchemaChange(c["kind"], c["column"], c.get("old_type"), c.get("new_type"),
                                      c.get("raw_column"), c.get("old_column"), c.get("new_column"))
                         for c in data["changes"]),
                   tuple(dict(c) for c in data["columns"]),
                   dict(data.get("lake_names") or {}))


def column_spec(column: Column) -> ColumnSpec:
    return column.model_dump(by_alias=True, exclude_defaults=True, include={
        "name", "type", "nullable", "enum_type", "enum_values", "carry_as"}) | {"nullable": column.nullable}


def columns_of(table: Table) -> tuple[ColumnSpec, ...]:
    return tuple(column_spec(c) for c in table.columns)


def type_text(column: Column) -> str:
    """A column's type in messages and records: `numeric(20,4)`, `enum txn_type`, `numeric as text`."""
    if column.enum_type:
        return f"enum {column.enum_type}"
    return f"{column.type} as {column.carry_as}" if column.carry_as else column.type


def with_columns(table: Table, columns: tuple[ColumnSpec, ...] | list[Column]) -> Table:
    """The spec table with another column list (keys, topic and raw name unchanged); a column the spec declares
    the same way keeps the spec's own model."""
    from bankflow.spec.models import Column

    declared = {c.name: c for c in table.columns}
    new = []
    for column in columns:
        if isinstance(column, Column):
            new.append(column)
            continue
        known = declared.get(column["name"])
        new.append(known if known is not None and column_spec(known) == column else Column.model_validate(column))
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

    # ---- columns the spec leaves out on purpose

    def _not_carried_key(self, table: str) -> str:
        return f"{self.base}/{table}/not-carried"

    def not_carried(self, table: str) -> set[str]:
        """Source columns the spec leaves out on purpose: in the table, never in the spec (or taken out of it).
        They are not carried and not a schema change; a column the source gains later is (freeze / evolve)."""
        state = self._not_carried_state(table)
        return set(state["not_carried"]) if state else set()

    def _not_carried_state(self, table: str) -> dict[str, Any] | None:
        data: dict[str, Any] | None = read_json(self.fs, self._not_carried_key(table))
        return data

    def note_spec_columns(self, table: Table, live: set[str]) -> set[str]:
        """Keep the not-carried set in step with the spec (the source stage calls this before each stream): the
        first time, every live column the spec does not declare; later, columns taken out of the spec join it
        and columns put into the spec leave it. A column the source gained meanwhile is left to the stream."""
        declared = {c.name for c in table.columns}
        state = self._not_carried_state(table.name)
        if state is None:
            not_carried = live - declared
        else:
            removed = set(state["spec_columns"]) - declared
            not_carried = (set(state["not_carried"]) | (removed & live)) - declared
        if state is None or set(state["not_carried"]) != not_carried or set(state["spec_columns"]) != declared:
            put_atomic(self.fs, self._not_carried_key(table.name), orjson.dumps(
                {"table": table.name, "spec_columns": sorted(declared), "not_carried": sorted(not_carried)}))
        return not_carried

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

    def record_at(self, table: str, position: int | None = None) -> ShapeRecord | None:
        """The last record at or before the stream position (commit LSN) `position` (None: the last one).
        Records past the position belong to a crashed run and are written again when their events come."""
        records = [r for r in self.records(table) if position is None or r.position.commit <= position]
        return records[-1] if records else None

    def shape_at(self, table: Table, position: int) -> Table:
        """The table's shape for events after `position`: the spec's, or that of the record in effect there."""
        record = self.record_at(table.name, position)
        return with_columns(table, record.columns) if record else table

    def current_shape(self, table: Table) -> Table:
        """The shape of the table's latest record (the spec's without one)."""
        records = self.records(table.name)
        return with_columns(table, records[-1].columns) if records else table

    def raw_shape(self, table: Table) -> Table:
        """Every column any shape of the table had, each with its latest type: what raw must hold."""
        records = self.records(table.name)
        if not records:
            return table
        columns: dict[str, ColumnSpec] = {c["name"]: c for c in columns_of(table)}
        for record in records:
            for column in record.columns:
                name: str = column["name"]
                lake = record.lake_names.get(name, name)
                columns[lake] = {**column, "name": lake, "nullable": True}
            for change in record.changes:  # a column given a new raw column keeps its old one at the old type
                if change.raw_column and change.old_column:
                    columns[change.column] = {**change.old_column, "nullable": True}
        return with_columns(table, tuple(columns.values()))


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
