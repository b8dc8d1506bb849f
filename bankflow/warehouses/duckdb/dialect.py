"""DuckDB SQL: quoted identifiers, the type map, raw DDL and `INSERT … BY NAME` from Parquet.

Source names (tables, columns) are spelled exactly as the source has them, always quoted: a plain name
(lower-case letters, digits, underscores, not a reserved word) reads the same unquoted, and DuckDB resolves
every identifier ignoring case, so `"KycStatus"`, `kycstatus` and `KYCSTATUS` all find the column `KycStatus`
(which is why the spec refuses two names of one table that differ only in case). bankflow's own names (raw
schema, ledger) are plain identifiers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from bankflow.spec.base import check_identifier
from bankflow.warehouses.base import Dialect

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table
    from bankflow.warehouses.duckdb.config import DuckDBWarehouse

LEDGER_TABLE = "_bankflow_loaded_files"


class DuckDBDialect(Dialect):
    name: ClassVar[str] = "duckdb"
    # sqlglot's name for this SQL: the verify guard (bankflow.sqlguard) parses warehouse_sql with it
    sqlglot_dialect: ClassVar[str] = "duckdb"
    type_map: ClassVar[dict[str, str]] = {
        "smallint": "SMALLINT", "integer": "INTEGER", "bigint": "BIGINT", "numeric": "DECIMAL({p},{s})",
        "real": "REAL", "double precision": "DOUBLE", "boolean": "BOOLEAN", "text": "VARCHAR",
        "varchar": "VARCHAR", "char": "VARCHAR", "uuid": "UUID", "json": "JSON", "jsonb": "JSON",
        "bytea": "BLOB", "date": "DATE", "time": "TIME", "timestamp": "TIMESTAMP", "timestamptz": "TIMESTAMPTZ",
    }
    # information_schema spellings → what `column_type` writes
    _aliases: ClassVar[dict[str, str]] = {"TIMESTAMPWITHTIMEZONE": "TIMESTAMPTZ", "TEXT": "VARCHAR",
                                          "INT64": "BIGINT", "FLOAT": "REAL", "FLOAT4": "REAL"}
    config: DuckDBWarehouse
    widens_decimal_scale: ClassVar[bool] = True

    def quote(self, name: str) -> str:
        return '"' + check_identifier(name) + '"'

    def raw_table(self, table: Table) -> str:
        return f"{self.quote(self.config.raw_schema)}.{self.quote_name(table.raw_name)}"

    def ledger_table(self) -> str:
        return self.qualify(self.config.raw_schema, LEDGER_TABLE)

    def normalise_type(self, text: str) -> str:
        text = super().normalise_type(text)
        return self._aliases.get(text, text)

    def setup_statements(self, resolved: ResolvedSpec, *, reveal: bool) -> list[str]:
        del reveal  # nothing secret in DuckDB's setup
        statements = [f"CREATE SCHEMA IF NOT EXISTS {self.quote(self.config.raw_schema)};\n"]
        statements.extend(self.raw_table_ddl(table) for table in resolved.spec.tables)
        return statements

    def load_statement(self, table: Table, files: Sequence[str] | None) -> str:
        return self.render("load.sql.j2", table=self.raw_table(table), files=self.file_list(files))

    def ledger_ddl(self) -> str:
        return (f"CREATE TABLE IF NOT EXISTS {self.ledger_table()} (file_key VARCHAR PRIMARY KEY, raw_table "
                "VARCHAR NOT NULL, rows BIGINT NOT NULL, loaded_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp, "
                "load_seq BIGINT, raw_file VARCHAR)")
