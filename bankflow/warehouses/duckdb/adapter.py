"""DuckDB adapter (the `local` warehouse): loads Parquet with INSERT … BY NAME, ledger in the same transaction."""

from __future__ import annotations

import os
import tempfile
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


# At most this many bytes of an s3:// lake's files are copied to local disk for one load statement.
SCRATCH_BYTES = 512 * 1024**2


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
        external, locked = con.execute("SELECT current_setting('enable_external_access'), "
                                       "current_setting('lock_configuration')").fetchone()
        if external is False and locked is True:
            return con  # another read-only adapter of this process configured this database already
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

    def select(self, sql: str, limit: int | None) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        """In a READ ONLY transaction however the file was opened: `bankflow run` answers queries on its own
        read-write database (bankflow.query)."""
        from bankflow.query import fetch

        with self._reading() as cursor:
            return fetch(cursor.execute(sql), limit)

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
        """A lake file's address: a local path for file:// lakes, s3://bucket/… for s3:// ones."""
        lake = self.resolved.spec.lake
        if lake.scheme == "s3":
            return f"{lake.url}/{key}"
        return str(self.resolved.resolve_path(lake.url) / key)

    @contextmanager
    def _readable(self, keys: Sequence[str]) -> Iterator[list[str]]:
        """Paths DuckDB reads the lake files from, in the order of `keys`.

        A file:// lake is read in place. An s3:// lake's files are fetched whole with s3fs into a temporary
        directory first (httpfs cannot be downloaded here): DuckDB then reads local files in C++, where reading
        them through a registered fsspec filesystem made every read a Python callback (15x slower on a chunk of
        small files, and contending for the GIL with a transform in the same process; benchmarks/bench_freshness).
        """
        lake = self.resolved.spec.lake
        if lake.scheme != "s3":
            yield [self.file_url(key) for key in keys]
            return
        from bankflow.lake.filesystem import lake_filesystem

        fs, root = lake_filesystem(self.resolved)
        with tempfile.TemporaryDirectory(prefix="bankflow-load-") as scratch:
            local = [os.path.join(scratch, f"{n}.parquet") for n in range(len(keys))]
            fs.get([f"{root}/{key}" for key in keys], local)
            yield local

    def _chunks(self, files: Sequence[str]) -> Iterator[list[str]]:
        """The files in load statements of at most `files_per_statement`; on an s3:// lake also of at most
        `SCRATCH_BYTES` (what one chunk's local copies may take; a larger file goes alone)."""
        if self.resolved.spec.lake.scheme != "s3":
            yield from (list(keys) for keys in chunked(files, self.capabilities.files_per_statement))
            return
        from bankflow.lake.filesystem import lake_filesystem

        fs, root = lake_filesystem(self.resolved)
        sizes = fs.sizes([f"{root}/{key}" for key in files])
        chunk: list[str] = []
        total = 0
        for key, size in zip(files, sizes, strict=True):
            if chunk and (len(chunk) >= self.capabilities.files_per_statement or total + size > SCRATCH_BYTES):
                yield chunk
                chunk, total = [], 0
            chunk.append(key)
            total += int(size or 0)
        if chunk:
            yield chunk

    def load_files(self, table: Table, files: Sequence[str]) -> LoadOutcome:
        """One transaction per chunk: the rows and their ledger entries commit together or not at all; the
        chunk's ledger rows carry one `load_seq` (max + 1) and each file's `_file` value (`raw_file`)."""
        self._writable()
        outcome = LoadOutcome()
        for keys in self._chunks(files):
            raw_files = self.raw_file_values(keys)
            with self._readable(keys) as paths:
                outcome.rows += self._load_chunk(table, keys, paths, raw_files)
            outcome.files += len(keys)
            # what the load means, spelled with the lake's URLs (not the temporary copies it read)
            outcome.statements.append(self.dialect.load_statement(table, [self.file_url(key) for key in keys]))
        return outcome

    def _load_chunk(self, table: Table, keys: Sequence[str], paths: list[str], raw_files: dict[str, str]) -> int:
        """One chunk's rows and its ledger rows in one transaction; returns the rows added."""
        target = self.dialect.raw_table(table)
        key_of = dict(zip(paths, keys, strict=True))
        self.con.execute("BEGIN TRANSACTION")
        try:
            before = self.query(f"SELECT count(*) FROM {target}")[0][0]
            self.con.execute(self.dialect.load_statement(table, paths))
            after = self.query(f"SELECT count(*) FROM {target}")[0][0]
            # From the files' footers: no column is added to the rows, so a source column may be `filename`.
            counts = dict(self.query("SELECT file_name, num_rows FROM parquet_file_metadata(?)", [paths]))
            # raw's commit position: read inside this transaction, so the chunk's number is larger than that
            # of every load committed before it (bankflow runs one load of a warehouse at a time).
            load_seq = self.query(f"SELECT coalesce(max(load_seq), 0) + 1 FROM {self.ledger}")[0][0]
            self.con.executemany(
                f"INSERT INTO {self.ledger} (file_key, raw_table, rows, load_seq, raw_file) "
                "VALUES (?, ?, ?, ?, ?)",
                [[key_of[p], table.raw_name, int(counts.get(p, 0)), load_seq, raw_files[key_of[p]]]
                 for p in paths])
            self.con.execute("COMMIT")
        except Exception:
            self.con.execute("ROLLBACK")
            raise
        return int(after - before)
