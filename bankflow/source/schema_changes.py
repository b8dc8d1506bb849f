"""Following a source table whose columns change under a running pipeline: one decision for both CDC engines.

An engine observes the columns a change event has (the built-in reader from pgoutput's Relation message, the
Debezium consumer from the keys of an event's row image) and asks `ShapeFollower.observe` what to do, given the
shape the table's stream is in:

- nothing changed (or the event only lacks a column the live table has: it predates that column) → go on;
- `schema_changes: freeze`, or a new column of a type bankflow cannot carry exactly → stop before this event,
  with a message that says what changed and how to continue (the engine acknowledges nothing from here on);
- `schema_changes: evolve` → the new shape, recorded in the lake's schema history before any file in it.

Types of new columns come from the event where it carries them (Relation messages: the type OID, looked up in the
catalog) and from the live catalog otherwise (Debezium's JSON has no types); a new column is declared the way
`bankflow init` would declare it (enums with their labels, an unconstrained numeric carried as text).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bankflow.lake.schema_history import (
    ColumnSpec,
    SchemaChange,
    SchemaHistory,
    ShapeRecord,
    column_spec,
    successor_column,
    type_text,
    with_columns,
)
from bankflow.spec.types import ENUM, has_exact_image, parse_source_type

if TYPE_CHECKING:
    from bankflow.lake.positions import LsnPosition
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Column, Table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceType:
    """A column type as the catalog has it: `format_type` text, and what tells enums and arrays apart."""

    text: str
    typtype: str = "b"
    typcategory: str = ""
    name: str = ""
    labels: tuple[str, ...] = ()

    def carried(self, name: str) -> Column | None:
        """How a column of this type is carried (the way `bankflow init` would declare it); None: it cannot be
        carried exactly."""
        from bankflow.scaffold.introspect import Unsupported, map_type
        from bankflow.spec.models import Column

        try:
            spec_type, _comment = map_type(self.text, self.typtype, self.typcategory, self.labels)
        except Unsupported:
            return None
        values: dict[str, Any] = {"name": name, "type": spec_type}
        if spec_type == ENUM:
            values.update(enum_type=self.name, values=list(self.labels))
        elif not has_exact_image(parse_source_type(spec_type)):
            values["carry_as"] = "text"  # exact; a spec can say numeric(38,s) instead
        return Column.model_validate(values)

    def same_as(self, column: Column) -> bool:
        from bankflow.source.contract import same_source_type

        return same_source_type(column, self.text, self.typtype, self.name)


_TYPE_SQL = """
SELECT format_type(t.oid, %s), t.typtype, t.typcategory, t.typname,
       coalesce(array(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder),
                '{}')
FROM pg_type t WHERE t.oid = %s
"""
_LIVE_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typtype, t.typcategory, t.typname,
       coalesce(array(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder),
                '{}')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""


class SourceCatalog:
    """The live catalog of the source, on a plain connection opened at first use (schema changes are rare)."""

    def __init__(self, connect_kwargs: dict[str, Any] | Callable[[], dict[str, Any]]) -> None:
        self.connect_kwargs = connect_kwargs  # or how to get them, asked only when a change needs the catalog
        self._conn: Any = None
        self._types: dict[tuple[int, int], SourceType] = {}

    def _cursor(self) -> Any:
        if self._conn is None:
            import psycopg2

            kwargs = self.connect_kwargs() if callable(self.connect_kwargs) else self.connect_kwargs
            self._conn = psycopg2.connect(**kwargs)
            self._conn.autocommit = True
        return self._conn.cursor()

    def source_type(self, oid: int, typmod: int) -> SourceType:
        """The type of a Relation message's column (its type OID and modifier)."""
        key = (oid, typmod)
        if key not in self._types:
            with self._cursor() as cur:
                cur.execute(_TYPE_SQL, (typmod, oid))
                text, typtype, category, name, labels = cur.fetchone()
                self._types[key] = SourceType(text, typtype, category, name, tuple(labels))
        return self._types[key]

    def live_columns(self, schema: str, table: str) -> dict[str, SourceType]:
        """The table's columns now (dropped ones excluded), with their types."""
        with self._cursor() as cur:
            cur.execute(_LIVE_SQL, (schema, table))
            return {name: SourceType(text, typtype, category, type_name, tuple(labels))
                    for name, text, typtype, category, type_name, labels in cur.fetchall()}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass(frozen=True)
class Observed:
    """A column as a change event has it: its name and type (None: the event does not say, e.g. a Debezium
    field the shape already has; it is taken to be the shape's)."""

    name: str
    type: SourceType | None


def shape_changes(shape: Table, observed: list[Observed],
                  live: set[str]) -> tuple[list[SchemaChange], list[Observed]]:
    """The differences between the shape the stream is in and the columns an event has.

    A shape column the event lacks is a drop only when the live table lacks it too; otherwise the event predates
    the column (it was added after) and its value is absent, which is not a change. Returns (changes, the
    event's columns that are new or retyped to a type bankflow cannot carry exactly).
    """
    declared = {c.name: c for c in shape.columns}
    changes: list[SchemaChange] = []
    uncarried: list[Observed] = []
    for column in observed:
        known = declared.get(column.name)
        if column.type is None or (known is not None and column.type.same_as(known)):
            continue
        carried = column.type.carried(column.name)
        if carried is None:
            uncarried.append(column)
        elif known is None:
            changes.append(SchemaChange("added", column.name, None, type_text(carried),
                                        new_column=column_spec(carried)))
        else:
            carried = carried.model_copy(update={"nullable": known.nullable})
            changes.append(SchemaChange("retyped", column.name, type_text(known), type_text(carried),
                                        old_column=column_spec(known), new_column=column_spec(carried)))
    present = {c.name for c in observed}
    for name, gone in declared.items():
        if name not in present and name not in live:
            changes.append(SchemaChange("dropped", name, type_text(gone), None, old_column=column_spec(gone)))
    return changes, uncarried


def apply_changes(shape: Table, observed: list[Observed], changes: list[SchemaChange]) -> tuple[ColumnSpec, ...]:
    """The new column list: the event's order; a column of the shape the event lacks but the live table has
    (a newer column) stays."""
    declared = {c.name: column_spec(c) for c in shape.columns}
    new = {c.column: c.new_column for c in changes if c.new_column is not None}
    dropped = {c.column for c in changes if c.kind == "dropped"}
    present = {c.name for c in observed}
    out = [new.get(c.name) or declared[c.name] for c in observed if c.name in new or c.name in declared]
    out += [spec for name, spec in declared.items() if name not in present and name not in dropped]
    return tuple(out)


@dataclass
class ShapeDecision:
    changes: list[SchemaChange] = field(default_factory=list)
    described: list[str] = field(default_factory=list)
    stop: str | None = None  # set: the stream stops before this event, with this message
    shape: Table | None = None  # set: the stream goes on in this shape (evolve)


class ShapeFollower:
    """Decides on observed shapes for every table of one run and records what evolve accepted."""

    def __init__(self, history: SchemaHistory, catalog: SourceCatalog, schema: str,
                 widens: Callable[[ColumnSpec, ColumnSpec], bool] | None = None) -> None:
        self.history = history
        self.catalog = catalog
        self.schema = schema
        # whether the warehouse can widen raw's column from one spec type to another in place (None: always)
        self.widens = widens
        self.accepted: list[str] = []  # one line per accepted change, for the run's report
        self.lake_names: dict[str, dict[str, str]] = {}  # table → source column → lake/raw column

    def start_at(self, table: Table, position: int | None = None) -> Table:
        """The table's shape where its stream resumes (`position`: commit LSN; None: the latest), remembering
        its lake names for the batches of this run."""
        record = self.history.record_at(table.name, position)
        if record is None:
            return table
        self.lake_names[table.name] = dict(record.lake_names)
        return with_columns(table, record.columns)

    def _successors(self, table: str, changes: list[SchemaChange]) -> list[SchemaChange]:
        """Retyped columns the warehouse cannot widen in place get a new raw column of their own."""
        out = []
        names = self.lake_names.setdefault(table, {})
        for change in changes:
            if (change.kind == "retyped" and self.widens is not None and change.old_column and change.new_column
                    and not self.widens(change.old_column, change.new_column)):
                assert change.new_type is not None
                change = dataclasses.replace(change, raw_column=successor_column(change.column, change.new_type))
                names[change.column] = change.raw_column or change.column
            out.append(change)
        return out

    def observe(self, declared: Table, shape: Table, observed: list[Observed], live: set[str] | None,
                position: LsnPosition, commit_ts_us: int | None, where: str) -> ShapeDecision:
        """`declared`: the spec's table (its policy); `shape`: the one the stream is in; `live`: the live
        table's column names (None: read them here). Records the new shape under evolve."""
        if live is None:
            live = set(self.catalog.live_columns(self.schema, declared.name))
        ignored = self.history.not_carried(declared.name)
        observed = [o for o in observed if o.name not in ignored]  # left out of the spec on purpose
        changes, uncarried = shape_changes(shape, observed, live)
        if not changes and not uncarried:
            return ShapeDecision()
        described = [c.describe() for c in changes]
        described += [f"column {o.name!r} now of a type bankflow cannot carry exactly "
                      f"({o.type.text if o.type else '?'})" for o in uncarried]
        decision = ShapeDecision(changes, described)
        if declared.schema_changes == "freeze" or uncarried:
            decision.stop = (
                f"the source's columns changed: {where}: {'; '.join(described)}. "
                + ("bankflow cannot carry that column's type: leave it out of the publication's column list or "
                   "change its type in the source. " if uncarried else
                   f"Table {declared.name} has schema_changes: freeze, so the cdc stage stopped before this "
                   "event and acknowledged nothing from it on. ")
                + "To continue from exactly here: update the table in the spec to the new columns (bankflow init "
                  "--from-postgres shows them) or set schema_changes: evolve on it, then run apply again.")
            return decision
        changes = self._successors(declared.name, changes)
        decision.changes = changes
        described = [c.describe() for c in changes]
        new_columns = apply_changes(shape, observed, changes)
        self.history.write(ShapeRecord(declared.name, position, commit_ts_us, tuple(changes), new_columns,
                                       dict(self.lake_names.get(declared.name, {}))))
        decision.shape = with_columns(declared, new_columns)
        for change in described:
            line = f"{where}: {change}"
            log.warning("schema change accepted (evolve): %s", line)
            self.accepted.append(line)
        return decision


def warehouse_widens(resolved: ResolvedSpec) -> Callable[[ColumnSpec, ColumnSpec], bool]:
    """Whether the spec's warehouse widens raw's column from one carried type to another in place."""
    from bankflow.spec.models import Column

    dialect = resolved.spec.warehouse.dialect()

    def widens(old: ColumnSpec, new: ColumnSpec) -> bool:
        before, after = Column.model_validate(old).pg_type, Column.model_validate(new).pg_type
        return dialect.widens_in_place(dialect.column_type(before), after)

    return widens
