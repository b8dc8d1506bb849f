"""Snowflake adapter (the `stack` warehouse): COPY INTO from the external stage, then bankflow's ledger.

Exactly-once without `atomic_ledger`: Snowflake commits each COPY on its own (DDL/COPY and the ledger insert cannot
share one transaction portably), so the ledger row of a file is written only after its COPY succeeded. If the process
dies between the COPY and the ledger insert, the next run lists the file again; Snowflake's own load metadata
(kept 64 days per table, keyed by file name + ETag) then answers LOAD_SKIPPED for it and bankflow records it in the
ledger with the rows Snowflake reports. After those 64 days only the ledger guards, which is why it is kept at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bankflow.errors import StageError
from bankflow.render.warehouse import chunked
from bankflow.warehouses.adapter import LoadOutcome, WarehouseAdapter

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table
    from bankflow.warehouses.snowflake.config import SnowflakeWarehouse

# COPY INTO result columns, in Snowflake's order (the connector returns them as a plain result set)
COPY_RESULT_COLUMNS = ("file", "status", "rows_parsed", "rows_loaded", "error_limit", "errors_seen",
                       "first_error", "first_error_line", "first_error_character", "first_error_column_name")
LOADED_STATUSES = {"LOADED", "LOAD_SKIPPED", "PARTIALLY_LOADED"}


def load_private_key(path: str, passphrase: str | None) -> bytes:
    """The PEM key file as unencrypted PKCS#8 DER, which is what the connector's `private_key` accepts."""
    from cryptography.hazmat.primitives import serialization

    with open(path, "rb") as handle:
        key = serialization.load_pem_private_key(
            handle.read(), password=passphrase.encode() if passphrase else None)
    return key.private_bytes(encoding=serialization.Encoding.DER, format=serialization.PrivateFormat.PKCS8,
                             encryption_algorithm=serialization.NoEncryption())


def connect_kwargs(warehouse: SnowflakeWarehouse) -> dict[str, Any]:
    """Arguments for `snowflake.connector.connect` (secrets included: never log the result)."""
    kwargs: dict[str, Any] = {
        "account": warehouse.account,
        "user": warehouse.user,
        "warehouse": warehouse.warehouse,
        "database": warehouse.database,
        "paramstyle": "qmark",
        "application": "bankflow",
        "session_parameters": {"TIMEZONE": "UTC", "QUERY_TAG": "bankflow"},
        # Bounded: `plan` asks for the ledger and must fall back to a placeholder, not hang, when offline.
        "login_timeout": 15,
    }
    if warehouse.role:
        kwargs["role"] = warehouse.role
    if warehouse.authenticator == "key_pair":
        kwargs["private_key"] = load_private_key(warehouse.private_key_path or "", warehouse.private_key_passphrase)
    else:
        kwargs["password"] = warehouse.password or ""
    kwargs.update(warehouse.endpoint_overrides())
    return kwargs


def snowflake_type(data_type: str, precision: Any, scale: Any, length: Any, datetime_precision: Any) -> str:
    """information_schema's pieces back into the type text the renderer writes (NUMBER(p,s), VARCHAR(n), …)."""
    kind = data_type.upper()
    if kind in ("NUMBER", "DECIMAL", "NUMERIC") and precision is not None:
        return f"NUMBER({int(precision)},{int(scale or 0)})"
    if kind in ("TEXT", "VARCHAR", "STRING"):
        # 16777216 is Snowflake's default (unbounded) length
        return "VARCHAR" if length in (None, 16777216, 134217728) else f"VARCHAR({int(length)})"
    if kind in ("TIMESTAMP_TZ", "TIMESTAMP_NTZ", "TIMESTAMP_LTZ", "TIME") and datetime_precision is not None:
        return f"{kind}({int(datetime_precision)})"
    return kind


class SnowflakeAdapter(WarehouseAdapter):
    def __init__(self, resolved: ResolvedSpec, warehouse: SnowflakeWarehouse, connection: Any = None):
        super().__init__(resolved, warehouse)
        self.warehouse = warehouse
        if connection is None:
            import snowflake.connector

            try:
                connection = snowflake.connector.connect(**connect_kwargs(warehouse))
            except snowflake.connector.errors.Error as exc:
                raise StageError(f"cannot connect to Snowflake account {warehouse.account!r} as "
                                 f"{warehouse.user!r}: {resolved.redact(str(exc))}") from None
        self.con = connection

    # -- names
    @property
    def database(self) -> str:
        return self.warehouse.database.upper()

    @property
    def schema(self) -> str:
        return self.warehouse.raw_schema.upper()

    @property
    def ledger(self) -> str:
        return self.dialect.ledger_table()

    # -- primitives
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self._run(sql, params)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        return self._run(sql, params)

    def _run(self, sql: str, params: Sequence[Any] | None) -> list[tuple[Any, ...]]:
        cursor = self.con.cursor()
        try:
            cursor.execute(sql, list(params) if params else None)
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []
        finally:
            cursor.close()

    def select(self, sql: str, limit: int | None) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        from bankflow.query import fetch

        cursor = self.con.cursor()
        try:
            cursor.execute(sql)
            return fetch(cursor, limit)
        finally:
            cursor.close()

    def close(self) -> None:
        self.con.close()

    def table_columns(self, table: Table) -> dict[str, str]:
        # SELECT * rather than naming DATETIME_PRECISION: emulators (fakesnow) lack that column.
        cursor = self.con.cursor()
        try:
            cursor.execute(f"SELECT * FROM {self.dialect.quote(self.warehouse.database)}.information_schema.columns "
                           "WHERE table_schema = ? AND table_name = ?",
                           [self.schema, self.dialect.spell(table.raw_name)])
            names = [d[0].lower() for d in cursor.description or []]
            rows = [dict(zip(names, row, strict=False)) for row in cursor.fetchall()]
        finally:
            cursor.close()
        return {row["column_name"].lower(): snowflake_type(
            row["data_type"], row.get("numeric_precision"), row.get("numeric_scale"),
            row.get("character_maximum_length"), row.get("datetime_precision")) for row in rows}

    def ledger_keys(self, table: Table) -> set[str]:
        rows = self.query(f"SELECT FILE_KEY FROM {self.ledger} WHERE RAW_TABLE = ?", [table.raw_name])
        return {r[0] for r in rows}

    # -- loading
    def ledger_insert(self, n_rows: int) -> str:
        """INSERT of `n_rows` ledger rows (5 bound values each) sharing one new load_seq."""
        values = ", ".join(["(?, ?, ?, ?, ?)"] * n_rows)
        return (f"INSERT INTO {self.ledger} (FILE_KEY, RAW_TABLE, ROWS_LOADED, COPY_STATUS, RAW_FILE, LOAD_SEQ) "
                f"SELECT v.file_key, v.raw_table, v.rows_loaded, v.copy_status, v.raw_file, "
                f"(SELECT COALESCE(MAX(LOAD_SEQ), 0) + 1 FROM {self.ledger}) "
                f"FROM (VALUES {values}) AS v (file_key, raw_table, rows_loaded, copy_status, raw_file)")

    def load_files(self, table: Table, files: Sequence[str]) -> LoadOutcome:
        """COPY each chunk (ON_ERROR=ABORT_STATEMENT: all or nothing), then write its ledger rows."""
        outcome = LoadOutcome()
        for chunk in chunked(list(files), self.capabilities.files_per_statement):
            statement = self.dialect.load_statement(table, chunk)
            cursor = self.con.cursor()
            try:
                cursor.execute(statement)
                names = [d[0].lower() for d in cursor.description or []]
                results = [dict(zip(names, row, strict=False)) for row in cursor.fetchall()]
            except Exception as exc:
                raise StageError(f"COPY INTO {self.dialect.raw_table(table)} failed "
                                 f"({len(chunk)} file(s), first {chunk[0]!r}): "
                                 f"{self.resolved.redact(str(exc))}") from None
            finally:
                cursor.close()
            raw_files = self.raw_file_values(chunk)
            ledger_rows = []
            for key in chunk:
                result = _result_for(results, key)
                status = str(result.get("status", "LOADED")).upper() if result else "LOADED"
                if status not in LOADED_STATUSES:
                    raise StageError(f"COPY INTO {table.raw_name}: file {key!r} was not loaded ({status}): "
                                     f"{self.resolved.redact(str(result.get('first_error') if result else ''))}")
                rows = int(result.get("rows_loaded") or 0) if result else 0
                outcome.rows += rows
                ledger_rows.append([key, table.raw_name, rows, status, raw_files[key]])
            cursor = self.con.cursor()
            try:
                # One statement per chunk, written only now that the COPY has committed (see module doc); it takes
                # its load_seq (max + 1) in the same statement, so the number follows the ledger's commit order.
                cursor.execute(self.ledger_insert(len(ledger_rows)), [v for row in ledger_rows for v in row])
            finally:
                cursor.close()
            outcome.files += len(chunk)
            outcome.statements.append(statement)
            outcome.results.extend(results)
        return outcome


def _result_for(results: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """COPY reports the full stage URL (`s3://bucket/prefix/<key>`); match it back to the stage-relative key."""
    for result in results:
        name = str(result.get("file", ""))
        if name == key or name.endswith("/" + key):
            return result
    return None
