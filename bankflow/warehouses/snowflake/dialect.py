"""Snowflake SQL: quoted identifiers, the type map, file format, external stage and COPY INTO.

How a source name (table, column) is spelled: a plain name (lower-case letters, digits and underscores, not a
reserved word of Postgres, DuckDB or Snowflake) is upper-cased and quoted, the same object as the unquoted name,
so dbt and users write it plainly (`amount` is `"AMOUNT"`). Any other name (`KycStatus`, `order`,
`LoanSchedule`) is kept exactly as the source has it and always quoted: dbt SQL writes it double-quoted, exactly
as in Postgres (`"KycStatus"`). COPY INTO matches Parquet columns by name ignoring case, so the lake keeps the
source's names. bankflow's own names (database, schema, stage, file format, ledger) are upper-cased.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from bankflow.spec.base import check_identifier
from bankflow.warehouses.base import REDACTED, Dialect

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table
    from bankflow.warehouses.snowflake.config import SnowflakeWarehouse

LEDGER_TABLE = "_bankflow_loaded_files"


class SnowflakeDialect(Dialect):
    name: ClassVar[str] = "snowflake"
    # sqlglot's name for this SQL: the verify guard (bankflow.sqlguard) parses warehouse_sql with it
    sqlglot_dialect: ClassVar[str] = "snowflake"
    type_map: ClassVar[dict[str, str]] = {
        "smallint": "NUMBER(5,0)", "integer": "NUMBER(10,0)", "bigint": "NUMBER(19,0)",
        "numeric": "NUMBER({p},{s})", "real": "FLOAT", "double precision": "FLOAT", "boolean": "BOOLEAN",
        "text": "VARCHAR", "varchar": "VARCHAR({n})", "char": "VARCHAR({n})", "uuid": "VARCHAR(36)",
        "json": "VARIANT", "jsonb": "VARIANT", "bytea": "BINARY", "date": "DATE", "time": "TIME(6)",
        "timestamp": "TIMESTAMP_NTZ(6)", "timestamptz": "TIMESTAMP_TZ(6)",
    }
    # information_schema spellings → what `column_type` writes
    _aliases: ClassVar[dict[str, str]] = {"TIMESTAMP_TZ(6)": "TIMESTAMP_TZ", "TIMESTAMP_NTZ(6)": "TIMESTAMP_NTZ",
                                          "NUMBER(38,0)": "NUMBER(19,0)", "TEXT": "VARCHAR"}
    config: SnowflakeWarehouse

    def quote(self, name: str) -> str:
        """Upper-cased and quoted: the same object as the unquoted name, so dbt and users can write it plainly."""
        return '"' + check_identifier(name.lower()).upper() + '"'

    def fold(self, name: str) -> str:
        """Snowflake stores an unquoted identifier upper-cased."""
        return name.upper()

    def string_literal(self, value: str) -> str:
        """Snowflake treats a backslash in a literal as an escape: double it, and the quote."""
        return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"

    def _object(self, name: str) -> str:
        return self.qualify(self.config.database, self.config.raw_schema, name)

    def raw_table(self, table: Table) -> str:
        return f"{self.qualify(self.config.database, self.config.raw_schema)}.{self.quote_name(table.raw_name)}"

    def ledger_table(self) -> str:
        return self._object(LEDGER_TABLE)

    def normalise_type(self, text: str) -> str:
        text = super().normalise_type(text)
        return self._aliases.get(text, text)

    @staticmethod
    def stage_url(resolved: ResolvedSpec) -> str:
        """The external stage URL: `s3://…/` on AWS, `s3compat://…/` for S3-compatible storage with an endpoint."""
        url = resolved.spec.lake.url
        if resolved.spec.lake.s3_endpoint:
            url = "s3compat://" + url.removeprefix("s3://")
        return url.rstrip("/") + "/"

    def _inside_literal(self, value: str) -> str:
        """The body of a string literal (the template writes the quotes)."""
        return self.string_literal(value)[1:-1]

    def setup_statements(self, resolved: ResolvedSpec, *, reveal: bool) -> list[str]:
        config, lake = self.config, resolved.spec.lake
        file_format = self._object(config.file_format)
        endpoint = (lake.s3_endpoint or "").split("://", 1)[-1].rstrip("/")
        use_integration = config.stage_credentials == "integration" and config.storage_integration
        statements = [
            f"CREATE SCHEMA IF NOT EXISTS {self.qualify(config.database, config.raw_schema)};\n",
            self.render("file_format.sql.j2", file_format=file_format),
            self.render(
                "stage.sql.j2",
                stage=self._object(config.stage),
                url=self._inside_literal(self.stage_url(resolved)),
                endpoint=self._inside_literal(endpoint),
                storage_integration=self.quote(config.storage_integration)
                if use_integration and config.storage_integration else None,
                aws_key_id=self._inside_literal(lake.s3_key or "") if reveal else REDACTED,
                aws_secret_key=self._inside_literal(lake.s3_secret or "") if reveal else REDACTED,
                file_format=self._inside_literal(file_format),
            ),
        ]
        statements.extend(self.raw_table_ddl(table) for table in resolved.spec.tables)
        return statements

    def load_statement(self, table: Table, files: Sequence[str] | None) -> str:
        return self.render("copy_into.sql.j2", table=self.raw_table(table), stage=self._object(self.config.stage),
                           files=self.file_list(files), file_format=self._object(self.config.file_format))

    ledger_added_columns: ClassVar[tuple[tuple[str, str], ...]] = (("load_seq", "NUMBER(19,0)"),
                                                                    ("raw_file", "VARCHAR"))

    def ledger_ddl(self) -> str:
        return (f"CREATE TABLE IF NOT EXISTS {self.ledger_table()} (FILE_KEY VARCHAR NOT NULL, RAW_TABLE VARCHAR "
                "NOT NULL, ROWS_LOADED NUMBER(19,0) NOT NULL, COPY_STATUS VARCHAR, "
                "LOADED_AT TIMESTAMP_TZ DEFAULT CURRENT_TIMESTAMP(), LOAD_SEQ NUMBER(19,0), RAW_FILE VARCHAR, "
                "PRIMARY KEY (FILE_KEY, RAW_TABLE))")
