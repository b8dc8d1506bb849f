"""The warehouse interface: what the load stage and `verify` need, and nothing more.

Adapters declare capabilities so the load stage can choose the strongest exactly-once strategy each offers:
`atomic_ledger` (load and ledger rows commit in one transaction) or, failing that, the ledger written only after
a successful COPY plus the warehouse's own load metadata as a second guard.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bankflow.errors import StageError
from bankflow.render.warehouse import add_column_statement, raw_columns, setup_statements

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table

LEDGER_TABLE = "_bankflow_loaded_files"


@dataclass
class LoadOutcome:
    files: int = 0
    rows: int = 0
    statements: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)


class WarehouseAdapter(ABC):
    capabilities: frozenset[str] = frozenset()
    dialect: str = ""

    def __init__(self, resolved: ResolvedSpec):
        self.resolved = resolved

    # -- primitives
    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None: ...

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]: ...

    def iter_query(self, sql: str, batch: int = 50_000) -> Iterator[list[tuple[Any, ...]]]:
        """Rows in chunks, so `verify` never holds a large table twice in memory. Adapters stream if they can."""
        yield self.query(sql)

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def table_columns(self, table: Table) -> dict[str, str]:
        """Existing raw table columns (lower-case name → warehouse type); empty when the table is missing."""

    @abstractmethod
    def ledger_keys(self, table: Table) -> set[str]:
        """File keys already loaded into this table."""

    @abstractmethod
    def load_files(self, table: Table, files: Sequence[str]) -> LoadOutcome:
        """Load the given lake files (keys relative to the lake root) and record them in the ledger."""

    # -- shared behaviour
    def setup(self) -> list[str]:
        """Schema, stage, raw tables and the ledger; then reconcile drift. Returns the statements run."""
        statements = setup_statements(self.resolved, reveal=True)
        for statement in statements:
            self.execute(statement)
        self.execute(self.ledger_ddl())
        executed = [self.resolved.redact(s) for s in statements]
        for table in self.resolved.spec.tables:
            executed.extend(self.reconcile_columns(table))
        return executed

    @abstractmethod
    def ledger_ddl(self) -> str: ...

    def reconcile_columns(self, table: Table) -> list[str]:
        """Schema drift: add spec columns the raw table lacks; refuse a type that cannot be widened."""
        existing = self.table_columns(table)
        statements = []
        for name, pg_type in raw_columns(table, self.dialect):
            current = existing.get(name.lower())
            wanted = pg_type.snowflake if self.dialect == "snowflake" else pg_type.duckdb
            if current is None:
                statement = add_column_statement(self.resolved, table, name, pg_type)
                self.execute(statement)
                statements.append(statement)
            elif not self.type_compatible(current, wanted):
                raise StageError(
                    f"raw table {table.raw_name!r} column {name!r} is {current} in the warehouse but the spec "
                    f"declares {wanted}: this change cannot be widened in place; migrate the raw table "
                    "(e.g. add a new column) or restore the declared type")
        return statements

    @staticmethod
    def type_compatible(current: str, wanted: str) -> bool:
        def norm(text: str) -> str:
            return text.upper().replace(" ", "")

        current, wanted = norm(current), norm(wanted)
        if current == wanted or current.split("(")[0] == wanted.split("(")[0] == "VARCHAR":
            return True
        aliases = {"TIMESTAMPWITHTIMEZONE": "TIMESTAMPTZ", "TEXT": "VARCHAR", "INT64": "BIGINT",
                   "TIMESTAMP_TZ(6)": "TIMESTAMP_TZ", "TIMESTAMP_NTZ(6)": "TIMESTAMP_NTZ",
                   "NUMBER(38,0)": "NUMBER(19,0)"}
        return aliases.get(current, current) == aliases.get(wanted, wanted)
