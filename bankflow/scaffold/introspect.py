"""A Postgres catalog → a neutral model of the tables a spec can declare (`bankflow init --from-postgres`).

Read-only: one READ ONLY transaction over pg_catalog. `model_from_catalog` is pure (the unit tests feed it rows);
`map_type` decides, per column, the spec type or a refusal with a hint. Nothing is guessed: a type bankflow cannot
carry exactly, or a name its identifier rules refuse, becomes an `Omission` that the renderer writes as a comment
and `init` prints.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from bankflow.errors import BankflowError
from bankflow.spec.base import IDENTIFIER_RE, SpecValueError, check_source_name
from bankflow.spec.types import (
    CDC_COLUMN_NAMES,
    ENUM,
    INTEGER_KINDS,
    PgTypeError,
    has_exact_image,
    parse_source_type,
)

RESERVED_PREFIX = "_bankflow"

_NUMERIC_RE = re.compile(r"^numeric(?:\((\d+),(-?\d+)\))?$")
_LENGTH_RE = re.compile(r"^(character varying|character)(?:\((\d+)\))?$")
_TIMESTAMP_RE = re.compile(r"^(timestamp|time)(?:\(\d\))? (with|without) time zone$")
_PLAIN = {
    "smallint": "smallint", "integer": "integer", "bigint": "bigint", "real": "real",
    "double precision": "double precision", "boolean": "boolean", "text": "text", "uuid": "uuid",
    "json": "json", "jsonb": "jsonb", "bytea": "bytea", "date": "date",
}
_HINTS = {
    "money": "money depends on lc_monetary: change the column to numeric(p,s), or leave it out",
    "interval": "an interval has no exact image downstream: store it as text or numeric seconds, or leave it out",
    "time with time zone": "timetz is not carried: use time or timestamptz, or leave it out",
    "xml": "store it as text, or leave it out",
}
_DEFAULT_HINT = "bankflow carries only the types in bankflow/spec/types.py: cast it in the source, or leave it out"


class Unsupported(ValueError):
    """A column type bankflow cannot carry exactly; `hint` says what to do instead."""

    def __init__(self, reason: str, hint: str):
        super().__init__(reason)
        self.reason, self.hint = reason, hint


def quoted(name: str) -> str:
    """A source name as it may appear in a YAML comment or a message: JSON-quoted, control characters escaped."""
    return json.dumps(name, ensure_ascii=True)


def map_type(pg_type: str, typtype: str = "b", typcategory: str = "", enum_labels: tuple[str, ...] = ()) \
        -> tuple[str, str | None]:
    """`format_type()` of a column → (spec type, comment or None); raises Unsupported with a hint."""
    if typcategory == "A" or pg_type.endswith("]"):
        raise Unsupported(f"array type {pg_type}", "bankflow cannot carry arrays exactly yet: keep it as jsonb "
                          "in the source (to_jsonb(col)), or leave it out")
    if typtype == "e":
        labels = ", ".join(enum_labels)
        return ENUM, f"enum {pg_type} ({labels}): carried as its label (text)"
    if typtype == "d":
        raise Unsupported(f"domain type {pg_type}", "declare the column with the domain's base type in the "
                          "source, or leave it out")
    if typtype in ("c", "r", "m", "p"):
        raise Unsupported(f"user-defined type {pg_type}", _DEFAULT_HINT)
    spec_type = _base_type(pg_type)
    try:
        # the spec's own rules have the last word (lengths; a numeric wider than 38 is declared with carry_as)
        source = parse_source_type(spec_type)
    except PgTypeError as exc:
        raise Unsupported(f"type {pg_type}: {exc}", exc.hint) from None
    if not has_exact_image(source):
        return spec_type, (f"{pg_type} has no exact decimal image: carried as text (exact). To carry a decimal "
                           "instead write carry_as: numeric(38,s) with the scale you need (e.g. numeric(38,10)); "
                           "a value that does not fit it then becomes a dead letter")
    return spec_type, None


def _base_type(pg_type: str) -> str:
    if pg_type in _PLAIN:
        return _PLAIN[pg_type]
    if match := _NUMERIC_RE.match(pg_type):
        if match.group(1) is None:
            return "numeric"
        if int(match.group(2)) < 0:
            raise Unsupported(f"type {pg_type} (a negative scale)", "bankflow carries numeric(p,s) with 0 ≤ s ≤ p: "
                              "cast it in the source, or leave it out")
        return f"numeric({match.group(1)},{match.group(2)})"
    if match := _LENGTH_RE.match(pg_type):
        kind = "varchar" if match.group(1) == "character varying" else "char"
        return f"{kind}({match.group(2)})" if match.group(2) else kind
    if match := _TIMESTAMP_RE.match(pg_type):
        if match.group(1) == "time":
            if match.group(2) == "with":
                raise Unsupported(f"type {pg_type}", _HINTS["time with time zone"])
            return "time"
        # any precision: bankflow carries microseconds, and the contract matches a spec type without one
        return "timestamptz" if match.group(2) == "with" else "timestamp"
    raise Unsupported(f"type {pg_type}", _HINTS.get(pg_type, _DEFAULT_HINT))


def name_problem(name: str) -> str | None:
    """Why a name bankflow makes up (pipeline, schema) cannot be one, or None: a plain identifier."""
    if not IDENTIFIER_RE.match(name):
        return "is not a plain identifier ([a-z_][a-z0-9_]*, max 63)"
    return source_name_problem(name)


# dbt renders every model and YAML file with Jinja: a name holding these would be read as a template
_JINJA = ("{", "}")


def source_name_problem(name: str, *, table: bool = False) -> str | None:
    """Why a source table or column name cannot be a spec name, or None. Quoted, mixed-case names and reserved
    words are spec names (kept exactly); what the spec refuses, or what the dbt project cannot hold, is not."""
    try:
        check_source_name(name, "the name", path_safe=table)
    except SpecValueError as exc:
        return str(exc).removeprefix("the name ").removeprefix(repr(name) + " ")
    if name.lower().startswith(RESERVED_PREFIX):
        return f"starts with {RESERVED_PREFIX!r}, which bankflow keeps for its own objects"
    if name.lower() in CDC_COLUMN_NAMES:
        return "is one of bankflow's CDC metadata column names"
    if any(c in name for c in _JINJA):
        return "holds { or }, which dbt would read as Jinja in the models bankflow init writes"
    return None


# ---------------------------------------------------------------- the neutral model

@dataclass
class Omission:
    """Something of the source the spec leaves out (a column, or a whole table when column is None)."""

    table: str
    column: str | None
    what: str
    hint: str

    def line(self) -> str:
        where = quoted(self.table) + (f".{quoted(self.column)}" if self.column is not None else "")
        kind = "column" if self.column is not None else "table"
        return f"left out {kind} {where}: {self.what} (hint: {self.hint})"


@dataclass
class ColumnModel:
    name: str
    type: str
    nullable: bool = True
    identity: bool = False
    references: str | None = None
    comments: list[str] = field(default_factory=list)
    enum_type: str | None = None
    enum_values: list[str] | None = None
    carry_as: str | None = None


@dataclass
class TableModel:
    name: str
    columns: list[ColumnModel]
    primary_key: list[str]
    replica_identity: str = "full"
    comments: list[str] = field(default_factory=list)

    def column(self, name: str) -> ColumnModel | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass
class SourceModel:
    schema: str
    tables: list[TableModel]
    omissions: list[Omission] = field(default_factory=list)
    database: str = "postgres"
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"

    @property
    def complete(self) -> bool:
        return not self.omissions


# ---------------------------------------------------------------- the catalog, as rows

@dataclass
class CatalogColumn:
    table: str
    attnum: int
    name: str
    pg_type: str
    not_null: bool
    typtype: str = "b"
    typcategory: str = ""
    identity: str = ""  # attidentity: 'a' always, 'd' by default, '' none
    generated: str = ""  # attgenerated: 's' stored, 'v' virtual
    default: str | None = None
    enum_labels: tuple[str, ...] = ()
    type_name: str = ""  # pg_type.typname: an enum's own name, unquoted and unqualified


@dataclass
class CatalogConstraint:
    table: str
    kind: str  # 'p' primary key, 'f' foreign key
    columns: tuple[int, ...]
    ref_schema: str | None = None
    ref_table: str | None = None
    ref_columns: tuple[str, ...] = ()
    name: str = ""


@dataclass
class Catalog:
    schema: str
    tables: dict[str, str]  # name -> relreplident ('d', 'f', 'n', 'i')
    columns: list[CatalogColumn]
    constraints: list[CatalogConstraint]


_REPLICA = {"f": "full", "d": "default"}
_REPLICA_NAMES = {"n": "NOTHING", "i": "USING INDEX"}


def model_from_catalog(catalog: Catalog) -> SourceModel:
    """The spec's view of the catalog: what it can declare, and an Omission for everything else."""
    omissions: list[Omission] = []
    tables: dict[str, TableModel] = {}
    for name, replident in catalog.tables.items():
        table = _table(catalog, name, replident, omissions)
        if table is not None:
            tables[name] = table
    _foreign_keys(catalog, tables, omissions)
    return SourceModel(schema=catalog.schema, tables=parents_first(list(tables.values())), omissions=omissions)


def _table(catalog: Catalog, name: str, replident: str, omissions: list[Omission]) -> TableModel | None:
    problem = source_name_problem(name, table=True)
    if problem:
        omissions.append(Omission(name, None, f"the table name {problem}", "rename the table in the source, or "
                                  "leave it out"))
        return None
    rows = sorted((c for c in catalog.columns if c.table == name), key=lambda c: c.attnum)
    by_num = {c.attnum: c.name for c in rows}
    pk = next((k for k in catalog.constraints if k.table == name and k.kind == "p"), None)
    pk_names = [by_num[n] for n in pk.columns] if pk else []
    columns, dropped = [], []
    for row in rows:
        column = _column(row, omissions)
        if column is None:
            dropped.append(row.name)
        else:
            column.nullable = column.nullable and row.name not in pk_names
            columns.append(column)
    if not pk_names:
        omissions.append(Omission(name, None, "no primary key", "add a primary key in the source: bankflow keys "
                                  "every change by it"))
        return None
    lost_keys = [k for k in pk_names if k in dropped]
    if lost_keys or not columns:
        omissions.append(Omission(name, None, f"its primary key column(s) {', '.join(map(quoted, lost_keys))} "
                                  "cannot be declared" if lost_keys else "no column can be declared",
                                  "see the column(s) left out above"))
        return None
    table = TableModel(name, columns, pk_names, _REPLICA.get(replident, "full"))
    if replident == "d":
        table.comments.append("the source has REPLICA IDENTITY DEFAULT: deletes carry only the key; full (a change "
                              "on the source) gives every change its before-image")
    if replident not in _REPLICA:
        table.comments.append(f"the source has REPLICA IDENTITY {_REPLICA_NAMES.get(replident, replident)}; "
                              "bankflow needs full (deletes carry their before-image)")
    return table


def _column(row: CatalogColumn, omissions: list[Omission]) -> ColumnModel | None:
    problem = source_name_problem(row.name)
    if problem:
        omissions.append(Omission(row.table, row.name, f"{row.pg_type}; the name {problem}",
                                  "rename the column in the source, or leave it out"))
        return None
    if row.generated:
        omissions.append(Omission(row.table, row.name, f"generated column ({row.pg_type})",
                                  "logical replication does not publish generated columns: compute it in dbt"))
        return None
    try:
        spec_type, comment = map_type(row.pg_type, row.typtype, row.typcategory, row.enum_labels)
    except Unsupported as exc:
        omissions.append(Omission(row.table, row.name, exc.reason, exc.hint))
        return None
    column = ColumnModel(row.name, spec_type, nullable=not row.not_null)
    if comment:
        column.comments.append(comment)
    if spec_type == ENUM:
        column.enum_type = row.type_name or row.pg_type.rsplit(".", 1)[-1].strip('"')
        column.enum_values = list(row.enum_labels)
    elif not has_exact_image(parse_source_type(spec_type)):
        column.carry_as = "text"
    if row.identity:
        if spec_type in INTEGER_KINDS:
            column.identity = True
        else:  # cannot happen in Postgres; kept honest
            column.comments.append("identity on a non-integer column: not declared as identity")
    elif row.default and row.default.startswith("nextval("):
        column.comments.append(f"serial (default {row.default}): the spec declares no default")
    elif row.default:
        column.comments.append(f"source default {row.default}: the spec declares no default")
    return column


def _foreign_keys(catalog: Catalog, tables: dict[str, TableModel], omissions: list[Omission]) -> None:
    del omissions  # a foreign key left out is a comment, not a lost column
    for fk in (k for k in catalog.constraints if k.kind == "f" and k.table in tables):
        table = tables[fk.table]
        names = {c.attnum: c.name for c in catalog.columns if c.table == fk.table}
        local = [names[n] for n in fk.columns]
        target = f"{fk.ref_table}({', '.join(fk.ref_columns)})"
        first = table.column(local[0])
        if first is None:
            continue
        if len(local) > 1:
            first.comments.append(f"composite foreign key ({', '.join(local)}) → {target}: not declared "
                                  "(the spec declares single-column references)")
            continue
        parent = tables.get(fk.ref_table or "") if fk.ref_schema == catalog.schema else None
        if parent is None or parent.primary_key != list(fk.ref_columns):
            why = "not in the spec" if parent is None else "not its primary key"
            first.comments.append(f"foreign key → {fk.ref_schema}.{target}: not declared ({why})")
            continue
        if "." in f"{fk.ref_table}{fk.ref_columns[0]}":
            first.comments.append(f"foreign key → {target}: not declared (a name holding '.' cannot be referenced)")
            continue
        first.references = f"{fk.ref_table}.{fk.ref_columns[0]}"
    _break_cycles(list(tables.values()))


def _parents(table: TableModel) -> set[str]:
    return {c.references.split(".")[0] for c in table.columns if c.references} - {table.name}


def _break_cycles(tables: list[TableModel]) -> None:
    """The spec creates tables parents first: a reference that closes a cycle becomes a comment."""
    done: set[str] = set()
    for table in tables:
        for column in table.columns:
            parent = column.references.split(".")[0] if column.references else None
            if parent and parent not in done | {table.name} and _reaches(parent, table.name, tables):
                column.comments.append(f"foreign key → {column.references}: not declared (a cycle of "
                                       "foreign keys cannot be created parents first)")
                column.references = None
        done.add(table.name)


def _reaches(start: str, goal: str, tables: list[TableModel]) -> bool:
    by_name = {t.name: t for t in tables}
    seen, stack = set(), [start]
    while stack:
        name = stack.pop()
        if name == goal:
            return True
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        stack.extend(_parents(by_name[name]))
    return False


def parents_first(tables: list[TableModel]) -> list[TableModel]:
    ordered: list[TableModel] = []
    pending = list(tables)
    while pending:
        ready = [t for t in pending if _parents(t) <= {o.name for o in ordered}]
        if not ready:
            ordered.extend(pending)
            break
        ordered.extend(ready)
        pending = [t for t in pending if t not in ready]
    return ordered


# ---------------------------------------------------------------- reading a live catalog

_TABLES_SQL = """
select c.relname, c.relreplident from pg_catalog.pg_class c
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relkind in ('r', 'p') and not c.relispartition
order by c.relname
"""
_COLUMNS_SQL = """
select c.relname, a.attnum, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       t.typtype, t.typcategory, a.attidentity, a.attgenerated, pg_catalog.pg_get_expr(d.adbin, d.adrelid),
       coalesce((select array_agg(e.enumlabel::text order by e.enumsortorder) from pg_catalog.pg_enum e
                 where e.enumtypid = t.oid), '{}'), t.typname::text
from pg_catalog.pg_attribute a
join pg_catalog.pg_class c on c.oid = a.attrelid
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
join pg_catalog.pg_type t on t.oid = a.atttypid
left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
where n.nspname = %s and c.relname = any(%s) and a.attnum > 0 and not a.attisdropped
order by c.relname, a.attnum
"""
_CONSTRAINTS_SQL = """
select c.relname, k.contype, k.conkey, fn.nspname, fc.relname,
       coalesce((select array_agg(fa.attname::text order by u.i) from unnest(k.confkey) with ordinality u(num, i)
                 join pg_catalog.pg_attribute fa on fa.attrelid = k.confrelid and fa.attnum = u.num), '{}'),
       k.conname
from pg_catalog.pg_constraint k
join pg_catalog.pg_class c on c.oid = k.conrelid
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
left join pg_catalog.pg_class fc on fc.oid = k.confrelid
left join pg_catalog.pg_namespace fn on fn.oid = fc.relnamespace
where n.nspname = %s and c.relname = any(%s) and k.contype in ('p', 'f')
order by c.relname, k.conname
"""


def redact_url(text: str, url: str) -> str:
    password = urlsplit(url).password
    if password:
        for form in {password, unquote(password)}:
            text = text.replace(form, "***")
    return text


def fetch_catalog(url: str, schema: str, tables: list[str] | None = None) -> Catalog:
    """The catalog rows of `schema` (only `tables` when given), in one READ ONLY transaction."""
    import psycopg2

    try:
        conn = psycopg2.connect(url, connect_timeout=10, application_name="bankflow-init")
    except psycopg2.Error as exc:
        raise BankflowError(f"cannot connect to --from-postgres: {redact_url(' '.join(str(exc).split()), url)}") \
            from None
    try:
        conn.set_session(readonly=True)
        with conn.cursor() as cur:
            cur.execute("set local statement_timeout = '60s'")
            cur.execute(_TABLES_SQL, (schema,))
            found = {name: replident for name, replident in cur.fetchall()}
            if not found:
                raise BankflowError(f"schema {quoted(schema)} has no tables (or does not exist, or is not readable)")
            if tables:
                missing = [t for t in tables if t not in found]
                if missing:
                    raise BankflowError(f"--tables: not in schema {quoted(schema)}: {', '.join(map(quoted, missing))}")
                found = {t: found[t] for t in tables}
            names = list(found)
            cur.execute(_COLUMNS_SQL, (schema, names))
            columns = [CatalogColumn(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], tuple(r[10]),
                                     r[11]) for r in cur.fetchall()]
            cur.execute(_CONSTRAINTS_SQL, (schema, names))
            constraints = [CatalogConstraint(r[0], r[1], tuple(r[2]), r[3], r[4], tuple(r[5]), r[6])
                           for r in cur.fetchall()]
        conn.rollback()
    except psycopg2.Error as exc:
        raise BankflowError(f"reading the catalog: {redact_url(' '.join(str(exc).split()), url)}") from None
    finally:
        conn.close()
    return Catalog(schema, found, columns, constraints)


def introspect(url: str, schema: str, tables: list[str] | None = None) -> SourceModel:
    model = model_from_catalog(fetch_catalog(url, schema, tables))
    parts = urlsplit(url)
    model.host = parts.hostname or model.host
    model.port = parts.port or model.port
    model.user = unquote(parts.username) if parts.username else model.user
    model.database = unquote(parts.path.lstrip("/")) or model.database
    return model


def connection_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """Only what is safe inside `${VAR:-default}` in YAML: plain host, user and database names."""
    host = re.compile(r"^[A-Za-z0-9._-]{1,253}$")
    safe = {k: v for k, v in values.items() if isinstance(v, int) or (isinstance(v, str) and host.match(v))}
    # the spec's user and database are identifiers: a default it would refuse is left out (the variable is required)
    return {k: v for k, v in safe.items() if k not in ("user", "database") or IDENTIFIER_RE.match(str(v))}
