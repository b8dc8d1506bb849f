"""Following a source table whose columns change under a running pipeline: one decision for both CDC engines.

An engine observes the columns a change event has (the built-in reader from pgoutput's Relation message, the
Debezium consumer from the keys of an event's row image) and asks `ShapeFollower.observe` what to do, given the
shape the table's stream is in:

- nothing changed (or the event only lacks a column the live table has: it predates that column) → go on;
- `schema_changes: freeze`, or a new column of a type bankflow cannot carry exactly → stop before this event,
  with a message that says what changed and how to continue (the engine acknowledges nothing from here on);
- `schema_changes: evolve` → the new shape, recorded in the lake's schema history before any file in it.

Types of new columns come from the event where it carries them (Relation messages) and from the live catalog
otherwise (Debezium's JSON has no types): `format_type`, as the spec writes it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bankflow.lake.schema_history import (
    SchemaChange,
    SchemaHistory,
    ShapeRecord,
    apply_changes,
    shape_changes,
    with_columns,
)
from bankflow.spec.types import PgTypeError, parse_pg_type

if TYPE_CHECKING:
    from bankflow.lake.positions import LsnPosition
    from bankflow.spec.models import Table

log = logging.getLogger(__name__)


def spec_type(type_text: str) -> str | None:
    """A catalog type (`format_type`) as the spec writes it, or None when bankflow cannot carry it exactly."""
    text = re.sub(r"^(timestamp|time)\(\d\)", r"\1", type_text)
    try:
        return parse_pg_type(text).sql
    except PgTypeError:
        return None


class SourceCatalog:
    """The live catalog of the source, on a plain connection opened at first use (schema changes are rare)."""

    def __init__(self, connect_kwargs: dict[str, Any] | Callable[[], dict[str, Any]]) -> None:
        self.connect_kwargs = connect_kwargs  # or how to get them, asked only when a change needs the catalog
        self._conn: Any = None
        self._type_names: dict[tuple[int, int], str] = {}

    def _cursor(self) -> Any:
        if self._conn is None:
            import psycopg2

            kwargs = self.connect_kwargs() if callable(self.connect_kwargs) else self.connect_kwargs
            self._conn = psycopg2.connect(**kwargs)
            self._conn.autocommit = True
        return self._conn.cursor()

    def type_name(self, oid: int, typmod: int) -> str:
        key = (oid, typmod)
        if key not in self._type_names:
            with self._cursor() as cur:
                cur.execute("SELECT format_type(%s, %s)", key)
                self._type_names[key] = cur.fetchone()[0]
        return self._type_names[key]

    def live_columns(self, schema: str, table: str) -> dict[str, str]:
        """The table's columns now (dropped ones excluded): name → `format_type` text."""
        with self._cursor() as cur:
            cur.execute("SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
                        "ORDER BY a.attnum", (schema, table))
            return {name: type_text for name, type_text in cur.fetchall()}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass(frozen=True)
class Observed:
    """A column as a change event has it: its name, its type as the spec writes it (None: not carriable), and
    the type's text in the source (for messages)."""

    name: str
    type: str | None
    source_type: str


@dataclass
class ShapeDecision:
    changes: list[SchemaChange] = field(default_factory=list)
    described: list[str] = field(default_factory=list)
    stop: str | None = None  # set: the stream stops before this event, with this message
    shape: Table | None = None  # set: the stream goes on in this shape (evolve)


class ShapeFollower:
    """Decides on observed shapes for every table of one run and records what evolve accepted."""

    def __init__(self, history: SchemaHistory, catalog: SourceCatalog, schema: str) -> None:
        self.history = history
        self.catalog = catalog
        self.schema = schema
        self.accepted: list[str] = []  # one line per accepted change, for the run's report

    def observe(self, declared: Table, shape: Table, observed: list[Observed], live: set[str] | None,
                position: LsnPosition, commit_ts_us: int | None, where: str) -> ShapeDecision:
        """`declared`: the spec's table (its policy); `shape`: the one the stream is in; `live`: the live
        table's column names (None: read them here). Records the new shape under evolve."""
        columns = [(o.name, o.type) for o in observed]
        if live is None:
            live = set(self.catalog.live_columns(self.schema, declared.name))
        changes, uncarried = shape_changes(shape, columns, live)
        known = {c.name for c in shape.columns}
        uncarried = [n for n in uncarried if n not in known]
        if not changes and not uncarried:
            return ShapeDecision()
        described = [c.describe() for c in changes]
        described += [f"column {o.name!r} added, of a type bankflow cannot carry exactly ({o.source_type})"
                      for o in observed if o.name in uncarried]
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
        new_columns = apply_changes(shape, columns, changes)
        self.history.write(ShapeRecord(declared.name, position, commit_ts_us, tuple(changes), new_columns))
        decision.shape = with_columns(declared, new_columns)
        for change in described:
            line = f"{where}: {change}"
            log.warning("schema change accepted (evolve): %s", line)
            self.accepted.append(line)
        return decision
