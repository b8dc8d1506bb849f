"""The spec's `warehouse: {type: snowflake}`: account, credentials, and the external stage over the S3 lake."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from bankflow.spec.base import SpecValueError, check_identifier
from bankflow.warehouses.base import WarehouseCapabilities, WarehouseConfig

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Transform
    from bankflow.warehouses.adapter import WarehouseAdapter
    from bankflow.warehouses.snowflake.dialect import SnowflakeDialect

# What the dbt profile's env_var() names when a secret was written in the spec rather than taken from a variable.
PASSWORD_VAR = "BANKFLOW_WAREHOUSE_PASSWORD"
PASSPHRASE_VAR = "BANKFLOW_WAREHOUSE_KEY_PASSPHRASE"


class SnowflakeWarehouse(WarehouseConfig):
    # COPY INTO commits on its own (no shared transaction with the ledger); Snowflake keeps 64 days of load
    # metadata per table, which answers LOAD_SKIPPED for a file copied before a crash.
    capabilities: ClassVar[WarehouseCapabilities] = WarehouseCapabilities(
        atomic_ledger=False, load_metadata_days=64, lake_schemes=frozenset({"s3"}), files_per_statement=1000)

    type: Literal["snowflake"] = "snowflake"
    account: str
    user: str
    authenticator: Literal["password", "key_pair"] = "password"
    password: str | None = Field(None, json_schema_extra={"secret": True})
    private_key_path: str | None = None
    private_key_passphrase: str | None = Field(None, json_schema_extra={"secret": True})
    role: str | None = None
    warehouse: str
    database: str
    raw_schema: str = "raw"
    stage: str = "bankflow_lake"
    file_format: str = "bankflow_parquet"
    storage_integration: str | None = None
    stage_credentials: Literal["integration", "keys"] = Field(
        "integration", description="keys: AWS key/secret taken from the lake's s3_key/s3_secret"
    )
    host: str | None = Field(None, description="override the account host (tests: a fakesnow server)")
    port: int | None = None
    protocol: Literal["https", "http"] = "https"

    @field_validator("database", "raw_schema", "stage", "file_format", "warehouse", "role", "storage_integration")
    @classmethod
    def _ident(cls, value: str | None) -> str | None:
        return None if value is None else check_identifier(value.lower())

    @model_validator(mode="after")
    def _auth(self) -> SnowflakeWarehouse:
        if self.authenticator == "key_pair" and not self.private_key_path:
            raise SpecValueError("authenticator key_pair needs private_key_path",
                                 "set private_key_path to the PEM key file (or use authenticator: password)",
                                 at=("authenticator",))
        if self.stage_credentials == "integration" and not self.storage_integration:
            raise SpecValueError("stage_credentials integration needs storage_integration",
                                 "set storage_integration, or stage_credentials: keys",
                                 at=("stage_credentials",))
        return self

    def endpoint_overrides(self) -> dict[str, object]:
        """host/port/protocol when they differ from the account's own endpoint (the connector and dbt alike)."""
        overrides: dict[str, object] = {}
        if self.host:
            overrides["host"] = self.host
        if self.port:
            overrides["port"] = self.port
        if self.protocol != "https":
            overrides["protocol"] = self.protocol
        return overrides

    def dialect(self) -> SnowflakeDialect:
        from bankflow.warehouses.snowflake.dialect import SnowflakeDialect

        return SnowflakeDialect(self)

    def connect(self, resolved: ResolvedSpec, *, read_only: bool = False) -> WarehouseAdapter | None:
        from bankflow.warehouses.snowflake.adapter import SnowflakeAdapter

        del read_only  # connecting creates nothing; the adapter only reads until setup() is called
        return SnowflakeAdapter(resolved, self)

    def dbt_profile(self, resolved: ResolvedSpec, transform: Transform) -> dict[str, Any]:
        output: dict[str, Any] = {
            "type": "snowflake", "account": self.account, "user": self.user, "database": self.database,
            "warehouse": self.warehouse, "schema": transform.target_schema, "threads": transform.threads,
        }
        if self.role:
            output["role"] = self.role
        if self.authenticator == "key_pair":
            output["private_key_path"] = self.private_key_path
            if self.private_key_passphrase:
                var = resolved.env_refs.get("warehouse.private_key_passphrase") or PASSPHRASE_VAR
                output["private_key_passphrase"] = "{{ env_var('" + var + "') }}"
        else:
            var = resolved.env_refs.get("warehouse.password") or PASSWORD_VAR
            output["password"] = "{{ env_var('" + var + "') }}"
        output.update(self.endpoint_overrides())
        return output

    def dbt_environment(self, resolved: ResolvedSpec) -> dict[str, str]:
        """Values written in the spec (not taken from a variable) reach dbt through bankflow's own names."""
        exported = {}
        if self.password and "warehouse.password" not in resolved.env_refs:
            exported[PASSWORD_VAR] = self.password
        if self.private_key_passphrase and "warehouse.private_key_passphrase" not in resolved.env_refs:
            exported[PASSPHRASE_VAR] = self.private_key_passphrase
        return exported

    def describe(self) -> str:
        return f"snowflake account {self.account}, database {self.database}, raw schema {self.raw_schema}"
