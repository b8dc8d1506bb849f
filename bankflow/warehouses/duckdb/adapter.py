"""DuckDB adapter (the `local` warehouse): loads Parquet with INSERT … BY NAME, ledger in the same transaction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from bankflow.errors import StageError
from bankflow.render.warehouse import chunked
from bankflow.warehouses.adapter import LoadOutcome, WarehouseAdapter
from bankflow.warehouses.duckdb.lock import connect as connect_waiting
from bankflow.warehouses.duckdb.lock import wait_seconds

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table
    from bankflow.warehouses.duckdb.config import DuckDBWarehouse


class DuckDBAdapter(WarehouseAdapter):
    """`read_only`: opened read-only with file access off and the configuration locked, so a query can neither
    write nor read a file (what `verify` and `plan` need); every query also runs in a READ ONLY transaction."""

    def __init__(self, resolved: ResolvedSpec, warehouse: DuckDBWarehouse, read_only: bool = False):
        super().__init__(resolved, warehouse)
        path = resolved.resolve_path(warehouse.path)
        self.path = path
        self.read_only = read_only
        # True when the read-only open had to share this process's read-write database (see _open_read_only)
        self.shared = False
        self.schema = warehouse.raw_schema
        if read_only:
            self.con = self._open_read_only()
            return  # a read-only connection loads nothing: no lake filesystem
        path.parent.mkdir(parents=True, exist_ok=True)
        self.con = connect_waiting(path, what="load", wait=wait_seconds(resolved))
        self.con.execute("SET TimeZone = 'UTC'")
        if resolved.spec.lake.scheme == "s3":
            # httpfs cannot be downloaded here (and needs no network on a laptop either): read s3:// via s3fs.
            from bankflow.lake.filesystem import lake_filesystem

            fs, _ = lake_filesystem(resolved)
            # One database instance per file and process: dbt-duckdb's connection may have registered it already.
            if not set(fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)) & set(
                    self.con.list_filesystems()):
                self.con.register_filesystem(fs)

    def _open_read_only(self) -> Any:
        import duckdb

        try:
            con = connect_waiting(self.path, read_only=True, what="read",
                                  wait=wait_seconds(self.resolved))
        except duckdb.ConnectionException:
            # This process holds the file read-write already (a load, or dbt-duckdb's connection after a
            # transform), and DuckDB opens one file one way per process: share that database. Its settings are
            # the writer's, so files stay readable; the READ ONLY transactions still refuse every write, and
            # `verify` refuses file-reading functions before it runs a query (bankflow.sqlguard).
            self.shared = True
            return duckdb.connect(str(self.path))
        con.execute("SET enable_external_access = false")  # no file, URL or extension, whatever the query says
        con.execute("SET lock_configuration = true")  # and no query can SET it back
        return con

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        """A cursor whose statements run in a READ ONLY transaction (rolled back afterwards)."""
        cursor = self.con.cursor()
        try:
            cursor.execute("BEGIN TRANSACTION READ ONLY")
            yield cursor
        finally:
            try:
                cursor.execute("ROLLBACK")
            except Exception:
                pass  # the transaction ended with the error being raised
            cursor.close()

    def _writable(self) -> None:
        if self.read_only:
            raise StageError(f"the DuckDB warehouse {self.path} is open read-only here")

    @property
    def ledger(self) -> str:
        return self.dialect.ledger_table()

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self._writable()
        self.con.execute(sql, params or [])

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        if self.read_only:
            with self._reading() as cursor:
                return cursor.execute(sql, params or []).fetchall()
        return self.con.execute(sql, params or []).fetchall()

    def iter_query(self, sql: str, batch: int = 50_000) -> Iterator[list[tuple[Any, ...]]]:
        if self.read_only:
            with self._reading() as cursor:
                cursor.execute(sql)
                while rows := cursor.fetchmany(batch):
                    yield rows
            return
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
        """One transaction per chunk: the rows and their ledger entries commit together or not at all; the
        chunk's ledger rows carry one `load_seq` (max + 1) and each file's `_file` value (`raw_file`)."""
        self._writable()
        outcome = LoadOutcome()
        target = self.dialect.raw_table(table)
        for keys in chunked(files, self.capabilities.files_per_statement):
            chunk_urls = [self.file_url(key) for key in keys]
            by_url = dict(zip(chunk_urls, keys, strict=True))
            statement = self.dialect.load_statement(table, chunk_urls)
            raw_files = self.raw_file_values(keys)
            self.con.execute("BEGIN TRANSACTION")
            try:
                before = self.query(f"SELECT count(*) FROM {target}")[0][0]
                self.con.execute(statement)
                after = self.query(f"SELECT count(*) FROM {target}")[0][0]
                # From the files' footers: no column is added to the rows, so a source column may be `filename`.
                counts = dict(self.query("SELECT file_name, num_rows FROM parquet_file_metadata(?)", [chunk_urls]))
                # raw's commit position: read inside this transaction, so the chunk's number is larger than that
                # of every load committed before it (bankflow runs one load of a warehouse at a time).
                load_seq = self.query(f"SELECT coalesce(max(load_seq), 0) + 1 FROM {self.ledger}")[0][0]
                self.con.executemany(
                    f"INSERT INTO {self.ledger} (file_key, raw_table, rows, load_seq, raw_file) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [[by_url[u], table.raw_name, int(counts.get(u, 0)), load_seq, raw_files[by_url[u]]]
                     for u in chunk_urls])
                self.con.execute("COMMIT")
            except Exception:
                self.con.execute("ROLLBACK")
                raise
            outcome.files += len(chunk_urls)
            outcome.rows += after - before
            outcome.statements.append(statement)
        return outcome
