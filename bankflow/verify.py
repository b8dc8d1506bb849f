"""`verify`: reconcile the source with the warehouse, to the cent.

Per table (generic, from the spec): the latest state rebuilt from raw (last version per key by `_lsn`, deletes
removed) must hold exactly the source's keys and values. Then the spec's own checks: pairs of queries that must
return the same rows (balances, sums per account, current dimension rows, …).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any

from bankflow.errors import StageError
from bankflow.render.sql import quote_pg
from bankflow.render.warehouse import qualified_raw_table

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Column, Table, VerifyCheck
    from bankflow.warehouses.adapter import WarehouseAdapter

SAMPLE = 5


@dataclass
class CheckResult:
    name: str
    ok: bool
    source_rows: int
    warehouse_rows: int
    missing_in_warehouse: list[str] = field(default_factory=list)
    unexpected_in_warehouse: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class VerifyReport:
    checks: list[CheckResult]
    # what verify could not compare: source columns the spec does not declare (they are not carried)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks], "notes": list(self.notes)}

    def format(self) -> str:
        lines = [f"note {note}" for note in self.notes]
        for check in self.checks:
            mark = "ok  " if check.ok else "DIFF"
            lines.append(f"{mark} {check.name}: source {check.source_rows} row(s), warehouse "
                         f"{check.warehouse_rows} row(s)")
            if check.error:
                lines.append(f"     error: {check.error}")
            for row in check.missing_in_warehouse:
                lines.append(f"     only in source:    {row}")
            for row in check.unexpected_in_warehouse:
                lines.append(f"     only in warehouse: {row}")
        failed = sum(1 for c in self.checks if not c.ok)
        lines.append("verify: all checks passed" if self.ok else f"verify: {failed} check(s) differ")
        return "\n".join(lines)


def normalise(value: Any) -> Any:
    """One comparable form per value across drivers.

    Python already equates (and hashes alike) Decimal('1.50') and Decimal('1.5'), ints and Decimals, and aware
    datetimes at the same instant whatever their tzinfo object, so those pass through untouched (the common case,
    kept fast). Strings compare exactly (a trailing blank is data); UUID objects, parsed JSON, bytes and floats
    are brought to one form. Only a char(n) column's padding is ignored, on purpose (`row_normaliser`).
    """
    kind = type(value)
    if value is None or kind is int or kind is Decimal or kind is bool or kind is dt.datetime or kind is str:
        return value
    if isinstance(value, float):  # only ever from a query that asked for one
        return Decimal(repr(value)).normalize()
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def _json_text(value: Any) -> Any:
    """JSON columns: psycopg2 returns parsed objects, warehouses return text; compare canonical text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return normalise(value)


RowNormaliser = Callable[[tuple[Any, ...]], tuple[Any, ...]]


def _unpadded(value: Any) -> Any:
    """char(n): Postgres pads to n and ignores trailing blanks in comparisons; so does verify, for those only."""
    return value.rstrip(" ") if type(value) is str else normalise(value)


def row_normaliser(json_columns: Sequence[int] = (), char_columns: Sequence[int] = ()) -> RowNormaliser:
    json_set, char_set = frozenset(json_columns), frozenset(char_columns)
    if not json_set and not char_set:
        return lambda row: tuple(map(normalise, row))
    return lambda row: tuple(_json_text(v) if i in json_set else _unpadded(v) if i in char_set else normalise(v)
                             for i, v in enumerate(row))


def _digests(chunks: Iterable[Sequence[tuple[Any, ...]]], norm: RowNormaliser) -> tuple[Counter[int], int]:
    """A multiset of row hashes: a large table is compared without holding its rows in memory."""
    counts: Counter[int] = Counter()
    rows = 0
    for chunk in chunks:
        counts.update(hash(norm(row)) for row in chunk)
        rows += len(chunk)
    return counts, rows


def _samples(chunks: Iterable[Sequence[tuple[Any, ...]]], norm: RowNormaliser, wanted: Counter[int]) -> list[str]:
    found: list[str] = []
    remaining = Counter(wanted)
    for chunk in chunks:
        for row in chunk:
            key = hash(norm(row))
            if remaining[key] > 0:
                remaining[key] -= 1
                found.append(repr(norm(row)))
                if len(found) >= SAMPLE:
                    return sorted(found)
    return sorted(found)


def compare(name: str, source: Callable[[], Iterable[Sequence[tuple[Any, ...]]]],
            warehouse: Callable[[], Iterable[Sequence[tuple[Any, ...]]]],
            norm: RowNormaliser | None = None) -> CheckResult:
    """Multiset equality of two queries' rows. `source`/`warehouse` re-run their query when called (the second
    run, only on a difference, collects a few sample rows to print)."""
    norm = norm or row_normaliser()
    left, left_rows = _digests(source(), norm)
    right, right_rows = _digests(warehouse(), norm)
    missing, unexpected = left - right, right - left
    result = CheckResult(name, not missing and not unexpected, left_rows, right_rows)
    if missing:
        result.missing_in_warehouse = _samples(source(), norm, missing)
    if unexpected:
        result.unexpected_in_warehouse = _samples(warehouse(), norm, unexpected)
    return result


def latest_state_sql(resolved: ResolvedSpec, table: Table) -> str:
    """The current rows rebuilt from the raw change log: last version per key by LSN, deletes dropped."""
    quote = resolved.spec.warehouse.dialect().quote_name  # source names, as the warehouse spells them
    columns = ", ".join(quote(c.name) for c in table.columns)
    keys = ", ".join(quote(k) for k in table.primary_key)
    return (f"SELECT {columns} FROM (SELECT *, row_number() OVER (PARTITION BY {keys} "
            f"ORDER BY {quote('_lsn')} DESC) AS _bankflow_rank FROM {qualified_raw_table(resolved, table)}) AS v "
            f"WHERE _bankflow_rank = 1 AND {quote('_op')} <> 'd'")


def source_column(column: Column) -> str:
    """A column in verify's source query, as bankflow carries it: a numeric carried as text is compared as
    Postgres' own text of it (what the CDC reader and the snapshot carried), an enum as its label."""
    name = quote_pg(column.name)
    return f"{name}::text" if column.pg_type.kind == "text" and column.source_type.kind == "numeric" else name


def fill(resolved: ResolvedSpec, sql: str) -> str:
    spec = resolved.spec
    target = spec.transform.target_schema if spec.transform else ""
    return (sql.replace("{source_schema}", quote_pg(spec.source.schema_name))
            .replace("{raw_schema}", spec.warehouse.raw_schema)
            .replace("{target_schema}", target))


def verify(resolved: ResolvedSpec, source_kwargs: dict[str, Any],
           adapter: WarehouseAdapter | None = None) -> VerifyReport:
    """Every check, on connections that cannot write: the source in a READ ONLY transaction, the warehouse opened
    read-only (DuckDB: no file access either). The spec's own queries are checked again before they run
    (bankflow.sqlguard) and run as parsed. `adapter`: a caller's read-write connection to the warehouse, closed
    first (DuckDB cannot open a file read-only while this process holds it read-write); verify opens its own."""
    if adapter is not None:
        adapter.close()
    reader = resolved.spec.warehouse.connect(resolved, read_only=True)
    if reader is None:
        raise StageError(f"nothing to verify: the {resolved.spec.warehouse.describe()} warehouse does not exist "
                         "yet (run bankflow apply first)")
    try:
        conn = source_connection(source_kwargs)
        try:
            return _Verifier(resolved, conn, reader).run()
        finally:
            conn.close()
    finally:
        reader.close()


# Bounds one statement on the source (a FETCH of a server-side cursor is one): verify holds a snapshot, and a
# runaway query would hold back vacuum on the user's production database.
STATEMENT_TIMEOUT = "15min"


def source_connection(source_kwargs: dict[str, Any]) -> Any:
    """A psycopg2 connection that cannot write: every transaction READ ONLY (the session default too, so even a
    COMMIT cannot start a writable one), standard strings (the guard parses them so), statements bounded."""
    import psycopg2

    settings = ["default_transaction_read_only=on", "standard_conforming_strings=on",
                f"statement_timeout={STATEMENT_TIMEOUT}"]
    options = " ".join([source_kwargs.get("options") or "", *(f"-c {s}" for s in settings)]).strip()
    conn = psycopg2.connect(**{**source_kwargs, "options": options})
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    return conn


class _Verifier:
    def __init__(self, resolved: ResolvedSpec, conn: Any, adapter: WarehouseAdapter):
        self.resolved = resolved
        self.conn = conn
        self.adapter = adapter
        self.cursors = 0
        self.checks: list[CheckResult] = []
        self.warehouse_dialect = resolved.spec.warehouse.dialect().sqlglot_dialect

    def run(self) -> VerifyReport:
        spec = self.resolved.spec
        for table in spec.tables:
            columns = ", ".join(map(source_column, table.columns))
            source_sql = f"SELECT {columns} FROM {quote_pg(spec.source.schema_name)}.{quote_pg(table.name)}"
            norm = row_normaliser([i for i, c in enumerate(table.columns) if c.pg_type.kind in ("json", "jsonb")],
                                  [i for i, c in enumerate(table.columns) if c.source_type.kind == "char"])
            name = f"{table.name}: raw latest state equals source rows"
            self.attempt(name, partial(compare, name, self.source(source_sql),
                                       self.warehouse(latest_state_sql(self.resolved, table)), norm))
        for check in spec.verify.checks:
            self.attempt(check.name, partial(self.spec_check, check))
        return VerifyReport(self.checks, self.undeclared_columns())

    def undeclared_columns(self) -> list[str]:
        """Source columns no spec column declares: not carried, so not compared (said, not hidden)."""
        spec = self.resolved.spec
        with self.conn.cursor() as cur:
            cur.execute("SELECT table_name, column_name FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = ANY(%s) ORDER BY table_name, ordinal_position",
                        (spec.source.schema_name, [t.name for t in spec.tables]))
            live = cur.fetchall()
        declared = {(t.name, c.name) for t in spec.tables for c in t.columns}
        return [f"{table}.{column}: in the source, not in the spec (not carried, not compared)"
                for table, column in live if (table, column) not in declared]

    def spec_check(self, check: VerifyCheck) -> CheckResult:
        """The spec's own queries: refused (the check fails, nothing runs) unless each is one read-only SELECT."""
        from bankflow.sqlguard import SOURCE_DIALECT

        source_sql = self.guarded("source_sql", check.source_sql, SOURCE_DIALECT)
        warehouse_sql = self.guarded("warehouse_sql", check.warehouse_sql, self.warehouse_dialect)
        return compare(check.name, self.source(source_sql), self.warehouse(warehouse_sql))

    def guarded(self, key: str, sql: str, dialect: str) -> str:
        from bankflow.sqlguard import QueryRefused, checked_query

        try:
            return checked_query(fill(self.resolved, sql), dialect)
        except QueryRefused as refused:
            raise QueryRefused(f"{key} refused: it {refused.reason} (hint: {refused.hint})", refused.hint) from None

    def source(self, sql: str) -> Callable[[], Iterator[list[tuple[Any, ...]]]]:
        def run() -> Iterator[list[tuple[Any, ...]]]:
            # One snapshot for every source query (the transaction); server-side cursors stream large tables.
            self.cursors += 1
            with self.conn.cursor(name=f"bankflow_verify_{self.cursors}") as cur:
                cur.itersize = 50_000
                cur.execute(sql)
                while rows := cur.fetchmany(50_000):
                    yield rows
        return run

    def warehouse(self, sql: str) -> Callable[[], Iterator[list[tuple[Any, ...]]]]:
        return lambda: self.adapter.iter_query(sql)

    def attempt(self, name: str, run: Callable[[], CheckResult]) -> None:
        try:
            self.checks.append(run())
        except Exception as exc:  # report, keep checking the rest
            self.conn.rollback()
            self.checks.append(CheckResult(name, False, 0, 0, error=self.resolved.redact(str(exc).strip())))
