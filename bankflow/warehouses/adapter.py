"""The live side of a warehouse: what the load stage, `status` and `verify` need, and nothing more.

Each adapter honours the capabilities its config declares (`bankflow.warehouses.base.WarehouseCapabilities`):
with `atomic_ledger` the rows and their ledger entries commit in one transaction; without it the ledger is written
only after a successful load statement and the warehouse's own load metadata is the second guard.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bankflow.errors import StageError
from bankflow.warehouses.base import raw_columns

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table
    from bankflow.warehouses.base import Dialect, WarehouseConfig


@dataclass
class LoadOutcome:
    files: int = 0
    rows: int = 0
    statements: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)


class WarehouseAdapter(ABC):
    def __init__(self, resolved: ResolvedSpec, config: WarehouseConfig):
        self.resolved = resolved
        self.config = config
        self.dialect: Dialect = config.dialect()
        self.capabilities = config.capabilities

    # -- primitives
    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None: ...

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]: ...

    def iter_query(self, sql: str, batch: int = 50_000) -> Iterator[list[tuple[Any, ...]]]:
        """Rows in chunks, so `verify` never holds a large table twice in memory. Adapters stream if they can."""
        yield self.query(sql)

    @abstractmethod
    def select(self, sql: str, limit: int | None) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        """One checked SELECT (`bankflow query`): column names, at most `limit` rows, whether there were more."""

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

    def raw_position(self) -> int:
        """raw's commit position: the ledger's largest load_seq (0 for an empty ledger). dbt's incremental
        models follow it (macros/bankflow/incremental.sql); `bankflow run` fixes it for each transform."""
        rows = self.query(f"SELECT max({self.dialect.quote_name('load_seq')}) FROM {self.dialect.ledger_table()}")
        value = rows[0][0] if rows else None
        return int(value or 0)

    def note_raw_files(self, values: dict[str, str]) -> None:
        """`_file` values a caller already read from the files' footers (`bankflow run`'s lake watch reads each
        footer once): `raw_file_values` does not open those files again."""
        self.__dict__.setdefault("_known_raw_files", {}).update(values)

    def raw_file_values(self, keys: Sequence[str]) -> dict[str, str]:
        """Per lake key: the `_file` value its rows carry (read from the Parquet footer's statistics).

        The lake writer stamps every row with the key it writes to, under the lake root it had then; raw keeps
        that value, the ledger keeps the key relative to the lake root. Reading the value back from the file
        (instead of rebuilding it from today's root) keeps the dbt join exact for a moved lake and for files
        written by other tools. Falls back to reading the column when the footer has no statistics.
        """
        import pyarrow.parquet as pq

        from bankflow.lake.filesystem import lake_filesystem

        known: dict[str, str] = self.__dict__.get("_known_raw_files", {})
        values: dict[str, str] = {key: known[key] for key in keys if key in known}
        if len(values) == len(keys):
            return values
        fs, root = lake_filesystem(self.resolved)
        for key in keys:
            if key in values:
                continue
            with fs.open(f"{root}/{key}", "rb") as handle:
                parquet = pq.ParquetFile(handle)
                found = single_value(parquet.metadata, "_file")
                if found is None:
                    distinct = set(parquet.read(columns=["_file"]).column("_file").to_pylist())
                    if len(distinct) > 1:
                        raise StageError(f"lake file {key!r} carries {len(distinct)} different _file values; "
                                         "bankflow writes one per file: rewrite the file")
                    found = next(iter(distinct), None)
            values[key] = found if found is not None else f"{root}/{key}"
        return values

    # -- shared behaviour
    def setup(self) -> list[str]:
        """Schema, stage, raw tables and the ledger; then reconcile drift. Returns the statements run."""
        statements = self.dialect.setup_statements(self.resolved, reveal=True)
        for statement in statements:
            self.execute(statement)
        self.execute(self.dialect.ledger_ddl())
        for statement in self.dialect.ledger_migrations():
            self.execute(statement)
        executed = [self.resolved.redact(s) for s in statements]
        for table in self.resolved.spec.tables:
            executed.extend(self.reconcile_columns(table))
        return executed

    def reconcile_columns(self, table: Table) -> list[str]:
        """Schema drift: add columns raw lacks and widen retyped ones where the warehouse can.

        The columns are the spec's plus every column the lake's schema history accepted (evolve): raw keeps a
        dropped column for the rows that had it, and takes an added one from its first event on.
        """
        from bankflow.lake.schema_history import SchemaHistory

        shape = SchemaHistory.of(self.resolved).raw_shape(table)
        existing = self.table_columns(table)
        statements = []
        for name, pg_type in raw_columns(shape):
            current = existing.get(name.lower())
            wanted = self.dialect.column_type(pg_type)
            if current is None:
                statement = self.dialect.add_column_statement(table, name, pg_type)
            elif self.dialect.type_compatible(current, wanted):
                continue
            elif self.dialect.widens_in_place(current, pg_type):
                statement = self.dialect.widen_column_statement(table, name, pg_type)
            else:
                raise StageError(
                    f"raw table {table.raw_name!r} column {name!r} is {current} in the warehouse but the spec "
                    f"declares {wanted}, which {self.dialect.name} cannot widen in place: restore the declared "
                    "type, or set schema_changes: evolve on the table (a retype raw cannot widen then goes to a "
                    "new raw column), or migrate the raw table")
            self.execute(statement)
            statements.append(statement)
        return statements


def single_value(metadata: Any, column: str) -> str | None:
    """The one value of a text column according to every row group's statistics, else None."""
    names = metadata.schema.names
    if column not in names:
        return None
    index = names.index(column)
    seen: set[str] = set()
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max:
            return None
        if not (getattr(stats, "is_min_value_exact", True) and getattr(stats, "is_max_value_exact", True)):
            return None  # truncated statistics: read the column instead
        low, high = stats.min, stats.max
        low = low.decode() if isinstance(low, bytes) else low
        high = high.decode() if isinstance(high, bytes) else high
        seen.update((str(low), str(high)))
    return next(iter(seen)) if len(seen) == 1 else None
