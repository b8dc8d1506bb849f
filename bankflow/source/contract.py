"""The source contract: the live catalog of the source against the spec's tables.

`compare` is pure (catalog rows in, findings out) so it is tested without a server; `read_catalog` is the
small reader of pg_catalog that feeds it. `plan`, `apply` (before anything streams) and `status` run both.
Each finding names the spec's file:line of the table or column it is about.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bankflow.spec.types import ENUM, TIME_KINDS, PgTypeError, parse_source_type

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Column, Table

REPLICA_IDENTITY = {"d": "default", "f": "full", "n": "nothing", "i": "index"}


@dataclass(frozen=True)
class CatalogColumn:
    name: str  # exactly as the catalog has it (attname): KycStatus, order
    type: str  # format_type(): numeric(18,2), character varying(64), timestamp with time zone, …
    not_null: bool
    typtype: str = "b"  # pg_type.typtype: 'e' for an enum
    type_name: str = ""  # pg_type.typname (an enum's own name, unquoted)
    enum_labels: tuple[str, ...] = ()


@dataclass
class CatalogTable:
    name: str
    columns: list[CatalogColumn] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)
    replica_identity: str = "default"  # default | full | nothing | index


@dataclass(frozen=True)
class Finding:
    """One difference between the spec and the source. `error`: apply stops; `warning`: reported."""

    severity: str
    table: str
    column: str | None
    message: str
    where: str  # file:line of the spec's table or column ("file" alone when the line is unknown)

    def __str__(self) -> str:
        what = f"{self.table}.{self.column}" if self.column else self.table
        return f"{self.where}: {what}: {self.message}"


def normalise_type(text: str) -> str:
    """A catalog type as the spec writes it (`character varying(64)` → `varchar(64)`); unknown types unchanged."""
    try:
        return parse_source_type(text).sql
    except PgTypeError:
        return text


def type_difference(column: Column, found: CatalogColumn) -> str | None:
    """Why the catalog's type is not the spec column's source type, or None.

    An enum matches by its type's name; a spec time type without precision matches any precision in the catalog
    (bankflow carries microseconds either way); `numeric` without precision matches the catalog's unconstrained
    numeric (the spec's `carry_as` says how it travels)."""
    spec = column.source_type
    if spec.kind == ENUM:
        if found.typtype != "e":
            return f"enum {column.enum_type} in the spec, {found.type} in the source"
        if found.type_name != column.enum_type:
            return f"enum {column.enum_type} in the spec, enum {found.type_name} in the source"
        return None
    try:
        live = parse_source_type(found.type)
    except PgTypeError:
        live = None
    if live is not None and (live == spec or (spec.kind in TIME_KINDS and live.kind == spec.kind
                                              and spec.precision is None)):
        return None
    return f"type {spec.sql} in the spec, {found.type} in the source"


def same_source_type(column: Column, type_text: str, typtype: str = "b", type_name: str = "") -> bool:
    """True when a catalog type (`format_type` text, and for an enum its typtype 'e' and typname) is the spec
    column's source type: what the built-in reader's shape check should ask of a Relation's column."""
    return type_difference(column, CatalogColumn(column.name, type_text, False, typtype, type_name)) is None


def _enum_labels(column: Column, found: CatalogColumn) -> str | None:
    if column.enum_values is None or found.typtype != "e" or list(found.enum_labels) == column.enum_values:
        return None
    return (f"enum labels [{', '.join(column.enum_values)}] in the spec, [{', '.join(found.enum_labels)}] in the "
            "source (values are carried as text either way; the embedded copy creates the spec's)")


def _where(resolved: ResolvedSpec, *path: str | int) -> str:
    line = resolved.line_of(*path)
    return f"{resolved.path}:{line}" if line else str(resolved.path)


def _compare_columns(resolved: ResolvedSpec, index: int, table: Table, live: CatalogTable) -> list[Finding]:
    findings = []
    by_name = {c.name: c for c in live.columns}
    for j, column in enumerate(table.columns):
        where = _where(resolved, "tables", index, "columns", j)
        found = by_name.get(column.name)
        if found is None:
            findings.append(Finding("error", table.name, column.name, "declared in the spec, missing in the source "
                                    "table (remove it from the spec or add it to the table)", where))
            continue
        if difference := type_difference(column, found):
            findings.append(Finding("error", table.name, column.name, difference, where))
        elif labels := _enum_labels(column, found):
            findings.append(Finding("warning", table.name, column.name, labels, where))
        if found.not_null == column.nullable:
            spec_null, source_null = ("NOT NULL", "nullable") if not column.nullable else ("nullable", "NOT NULL")
            findings.append(Finding("warning", table.name, column.name,
                                    f"{spec_null} in the spec, {source_null} in the source", where))
    declared = {c.name for c in table.columns}
    for extra in (c for c in live.columns if c.name not in declared):
        findings.append(Finding("warning", table.name, extra.name,
                                f"in the source ({extra.type}), not in the spec: it would not be carried",
                                _where(resolved, "tables", index, "columns", "__key__")))
    return findings


def compare(resolved: ResolvedSpec, catalog: dict[str, CatalogTable]) -> list[Finding]:
    """Every difference between the spec's tables and the catalog (`read_catalog`'s tables by name)."""
    findings: list[Finding] = []
    schema = resolved.spec.source.schema_name
    for index, table in enumerate(resolved.spec.tables):
        live = catalog.get(table.name)
        where = _where(resolved, "tables", index)
        if live is None:
            findings.append(Finding("error", table.name, None, f"no table {schema}.{table.name} in the source",
                                    where))
            continue
        findings += _compare_columns(resolved, index, table, live)
        if live.primary_key != list(table.primary_key):
            source_key = f"({', '.join(live.primary_key)})" if live.primary_key else "none"
            findings.append(Finding("error", table.name, None, f"primary key ({', '.join(table.primary_key)}) "
                                    f"in the spec, {source_key} in the source",
                                    _where(resolved, "tables", index, "primary_key")))
        if live.replica_identity != table.replica_identity:
            findings.append(Finding("warning", table.name, None, f"replica identity {table.replica_identity} in "
                                    f"the spec, {live.replica_identity} in the source",
                                    _where(resolved, "tables", index, "replica_identity")))
    return findings


_COLUMNS_SQL = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, c.relreplident, t.typtype,
       t.typname, coalesce((SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e
                            WHERE e.enumtypid = t.oid), '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')
ORDER BY c.relname, a.attnum
"""
_KEYS_SQL = """
SELECT c.relname, a.attname FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE i.indisprimary AND n.nspname = %s AND c.relname = ANY(%s) ORDER BY c.relname, k.ord
"""


def read_catalog(cur: Any, schema: str, tables: list[str]) -> dict[str, CatalogTable]:
    """The catalog of `tables` in `schema` (those that exist): columns, types, nullability, key, replica identity."""
    catalog: dict[str, CatalogTable] = {}
    cur.execute(_COLUMNS_SQL, (schema, tables))
    for relname, column, type_text, not_null, replident, typtype, typname, labels in cur.fetchall():
        table = catalog.setdefault(relname, CatalogTable(relname, replica_identity=REPLICA_IDENTITY.get(
            replident, replident)))
        if column is not None:
            table.columns.append(CatalogColumn(column, type_text, bool(not_null), typtype or "b", typname or "",
                                               tuple(labels or ())))
    cur.execute(_KEYS_SQL, (schema, tables))
    for relname, column in cur.fetchall():
        catalog[relname].primary_key.append(column)
    return catalog


def live_findings(resolved: ResolvedSpec, cur: Any, catalog: dict[str, CatalogTable]) -> list[Finding]:
    """The contract against each table's current shape (spec + the schema history's accepted changes).

    Once the slot exists, a column difference of an `evolve` table is the stream's to carry when its events
    arrive (a warning here); before the first snapshot it stops apply like any other difference.
    """
    from bankflow.lake.schema_history import evolved_spec

    findings = compare(evolved_spec(resolved), catalog)
    cur.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (resolved.spec.cdc.slot,))
    if cur.fetchone() is None:
        return findings
    evolving = {t.name for t in resolved.spec.tables if t.schema_changes == "evolve"}
    return [dataclasses.replace(f, severity="warning", message=f.message + " (schema_changes: evolve carries "
                                "it when the table's next change arrives)")
            if f.severity == "error" and f.table in evolving and f.column is not None else f
            for f in findings]


def check_contract(resolved: ResolvedSpec, connect_kwargs: dict[str, Any]) -> list[Finding]:
    """Connect, read the catalog, compare (for `plan` and `status`)."""
    import psycopg2

    conn = psycopg2.connect(**connect_kwargs)
    try:
        with conn.cursor() as cur:
            catalog = read_catalog(cur, resolved.spec.source.schema_name, [t.name for t in resolved.spec.tables])
            return live_findings(resolved, cur, catalog)
    finally:
        conn.close()
