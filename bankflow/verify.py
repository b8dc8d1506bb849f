"""`verify`: reconcile the source with the warehouse, to the cent.

Per table (generic, from the spec): the latest state rebuilt from raw (last version per key by `_lsn`, deletes
removed) must hold exactly the source's keys and values. Then the spec's own checks: pairs of queries that must
return the same rows (balances, sums per account, current dimension rows, …).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bankflow.render.sql import quote_duckdb, quote_pg, quote_snowflake
from bankflow.render.warehouse import qualified_raw_table

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table
    from bankflow.warehouse.base import WarehouseAdapter

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

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def format(self) -> str:
        lines = []
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
    """One comparable form per value: exact decimals, UTC timestamps, UUIDs and JSON as text."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, Decimal)):
        return Decimal(value).normalize() + Decimal(0)
    if isinstance(value, float):  # only ever from a query that asked for one (e.g. count in some drivers)
        return Decimal(repr(value)).normalize()
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    return str(value).rstrip() if isinstance(value, str) else str(value)


def compare(name: str, source_rows: list[tuple[Any, ...]], warehouse_rows: list[tuple[Any, ...]]) -> CheckResult:
    left = Counter(tuple(normalise(v) for v in row) for row in source_rows)
    right = Counter(tuple(normalise(v) for v in row) for row in warehouse_rows)
    missing = sorted(map(repr, (left - right).elements()))
    unexpected = sorted(map(repr, (right - left).elements()))
    return CheckResult(name, not missing and not unexpected, len(source_rows), len(warehouse_rows),
                       missing[:SAMPLE], unexpected[:SAMPLE])


def latest_state_sql(resolved: ResolvedSpec, table: Table, dialect: str) -> str:
    """The current rows rebuilt from the raw change log: last version per key by LSN, deletes dropped."""
    quote = quote_snowflake if dialect == "snowflake" else quote_duckdb
    columns = ", ".join(quote(c.name) for c in table.columns)
    keys = ", ".join(quote(k) for k in table.primary_key)
    return (f"SELECT {columns} FROM (SELECT *, row_number() OVER (PARTITION BY {keys} "
            f"ORDER BY {quote('_lsn')} DESC) AS _bankflow_rank FROM {qualified_raw_table(resolved, table)}) AS v "
            f"WHERE _bankflow_rank = 1 AND {quote('_op')} <> 'd'")


def fill(resolved: ResolvedSpec, sql: str) -> str:
    spec = resolved.spec
    target = spec.transform.target_schema if spec.transform else ""
    return (sql.replace("{source_schema}", quote_pg(spec.source.schema_name))
            .replace("{raw_schema}", spec.warehouse.raw_schema)
            .replace("{target_schema}", target))


def verify(resolved: ResolvedSpec, source_kwargs: dict[str, Any], adapter: WarehouseAdapter) -> VerifyReport:
    import psycopg2

    spec = resolved.spec
    checks: list[CheckResult] = []
    conn = psycopg2.connect(**source_kwargs)
    conn.set_session(readonly=True)
    try:
        # One snapshot for every source query; the warehouse is compared as of its last load.
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

            def source(sql: str) -> list[tuple[Any, ...]]:
                cur.execute(sql)
                return list(cur.fetchall())

            for table in spec.tables:
                columns = ", ".join(quote_pg(c.name) for c in table.columns)
                name = f"{table.name}: raw latest state equals source rows"
                try:
                    checks.append(compare(
                        name,
                        source(f"SELECT {columns} FROM {quote_pg(spec.source.schema_name)}.{quote_pg(table.name)}"),
                        adapter.query(latest_state_sql(resolved, table, adapter.dialect))))
                except Exception as exc:
                    conn.rollback()
                    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    checks.append(CheckResult(name, False, 0, 0, error=resolved.redact(str(exc).strip())))
            for check in spec.verify.checks:
                try:
                    checks.append(compare(check.name, source(fill(resolved, check.source_sql)),
                                          adapter.query(fill(resolved, check.warehouse_sql))))
                except Exception as exc:
                    conn.rollback()
                    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    checks.append(CheckResult(check.name, False, 0, 0, error=resolved.redact(str(exc).strip())))
    finally:
        conn.close()
    return VerifyReport(checks)
