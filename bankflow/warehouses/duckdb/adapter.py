"""DuckDB adapter (the `local` warehouse): loads Parquet with INSERT … BY NAME, ledger in the same transaction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from bankflow.render.warehouse import chunked
from bankflow.warehouses.adapter import LoadOutcome, WarehouseAdapter

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table
    from bankflow.warehouses.duckdb.config import DuckDBWarehouse


class DuckDBAdapter(WarehouseAdapter):
    def __init__(self, resolved: ResolvedSpec, warehouse: DuckDBWarehouse, read_only: bool = False):
        super().__init__(resolved, warehouse)
        import duckdb

        path = resolved.resolve_path(warehouse.path)
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.con = duckdb.connect(str(path), read_only=read_only)
        if not read_only:
            self.con.execute("SET TimeZone = 'UTC'")
        self.schema = warehouse.raw_schema
        if resolved.spec.lake.scheme == "s3":
            # httpfs cannot be downloaded here (and needs no network on a laptop either): read s3:// via s3fs.
            from bankflow.lake.filesystem import lake_filesystem

            fs, _ = lake_filesystem(resolved)
            # One database instance per file and process: dbt-duckdb's connection may have registered it already.
            if not set(fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)) & set(
                    self.con.list_filesystems()):
                self.con.register_filesystem(fs)

    @property
    def ledger(self) -> str:
        return self.dialect.ledger_table()

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self.con.execute(sql, params or [])

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params or []).fetchall()

    def iter_query(self, sql: str, batch: int = 50_000) -> Iterator[list[tuple[Any, ...]]]:
        cursor = self.con.cursor()
        try:
            cursor.execute(sql)
            while rows := cursor.fetchmany(batch):
                yield rows
        finally:
            cursor.close()

    def close(self) -> None:
        self.con.close()

    def table_columns(self, table: Table) -> dict[str, str]:
        rows = self.query("SELECT column_name, data_type FROM information_schema.columns "
                          "WHERE table_schema = ? AND table_name = ?", [self.schema, table.raw_name])
        return {name.lower(): kind for name, kind in rows}

    def ledger_keys(self, table: Table) -> set[str]:
        rows = self.query(f"SELECT file_key FROM {self.ledger} WHERE raw_table = ?", [table.raw_name])
        return {r[0] for r in rows}

    def file_url(self, key: str) -> str:
        """What DuckDB reads: a local path for file:// lakes, s3://bucket/… through the registered s3fs."""
        lake = self.resolved.spec.lake
        if lake.scheme == "s3":
            return f"{lake.url}/{key}"
        return str(self.resolved.resolve_path(lake.url) / key)

    def load_files(self, table: Table, files: Sequence[str]) -> LoadOutcome:
        """One transaction per chunk: the rows and their ledger entries commit together or not at all."""
        outcome = LoadOutcome()
        target = self.dialect.raw_table(table)
        for keys in chunked(files, self.capabilities.files_per_statement):
            chunk_urls = [self.file_url(key) for key in keys]
            by_url = dict(zip(chunk_urls, keys, strict=True))
            statement = self.dialect.load_statement(table, chunk_urls)
            self.con.execute("BEGIN TRANSACTION")
            try:
                before = self.query(f"SELECT count(*) FROM {target}")[0][0]
                self.con.execute(statement)
                after = self.query(f"SELECT count(*) FROM {target}")[0][0]
                counts = dict(self.query(
                    "SELECT filename, count(*) FROM read_parquet(?, filename = true, hive_partitioning = false) "
                    "GROUP BY filename",
                    [chunk_urls]))
                self.con.executemany(
                    f"INSERT INTO {self.ledger} (file_key, raw_table, rows) VALUES (?, ?, ?)",
                    [[by_url[u], table.raw_name, int(counts.get(u, 0))] for u in chunk_urls])
                self.con.execute("COMMIT")
            except Exception:
                self.con.execute("ROLLBACK")
                raise
            outcome.files += len(chunk_urls)
            outcome.rows += after - before
            outcome.statements.append(statement)
        return outcome
