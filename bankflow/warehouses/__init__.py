"""The warehouse registry: the spec's `warehouse.type` → that warehouse's config model, and through it everything else.

This is the only module that names the warehouses. Everything else asks the config the spec holds:
`spec.warehouse.capabilities`, `spec.warehouse.dialect()`, `spec.warehouse.connect(resolved)`,
`spec.warehouse.dbt_profile(...)` (see `bankflow.warehouses.base`).

To support a new warehouse `acme`, add a folder `bankflow/warehouses/acme/` with:

- `config.py`: `AcmeWarehouse(WarehouseConfig)` with `type: Literal["acme"] = "acme"`, its fields (secrets marked
  `json_schema_extra={"secret": True}` so they are redacted everywhere), its `capabilities`, and the four
  methods `dialect()`, `connect()`, `dbt_profile()`, `dbt_environment()`. Import nothing heavy at module level.
- `dialect.py`: `AcmeDialect(Dialect)`: `quote`, `type_map` (every kind of `bankflow.spec.types.KINDS`), `raw_table`,
  `ledger_table`, `ledger_ddl`, `setup_statements`, `load_statement`; `string_literal` if it is not standard SQL.
- `templates/`: `raw_table.sql.j2`, `add_column.sql.j2` and whatever its load statement renders (package data).
- `adapter.py`: `AcmeAdapter(WarehouseAdapter)`: `execute`, `query`, `select`, `close`, `table_columns`, `ledger_keys`,
  `load_files` (honouring the capabilities it declares: rows and ledger in one transaction if `atomic_ledger`).

Then add `AcmeWarehouse` to `WarehouseSpec` below; `tests/unit/test_registry.py` checks that every registered
warehouse maps every type kind, renders its SQL, and that no module outside the registries branches on a name.
A dbt adapter for it (dbt-acme) goes into the `pyproject.toml` extras.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from bankflow.errors import StageError
from bankflow.warehouses.base import WarehouseConfig
from bankflow.warehouses.duckdb.config import DuckDBWarehouse
from bankflow.warehouses.snowflake.config import SnowflakeWarehouse

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.warehouses.adapter import WarehouseAdapter

# The spec's `warehouse:` section: one of these, chosen by `type`.
WarehouseSpec = Annotated[DuckDBWarehouse | SnowflakeWarehouse, Field(discriminator="type")]

WAREHOUSES: dict[str, type[WarehouseConfig]] = {
    model.model_fields["type"].default: model for model in (DuckDBWarehouse, SnowflakeWarehouse)
}


def connect_warehouse(resolved: ResolvedSpec) -> WarehouseAdapter:
    """The live adapter of the spec's warehouse (its client library is imported now)."""
    adapter = resolved.spec.warehouse.connect(resolved)
    if adapter is None:  # only read-only connections may find nothing to open
        raise StageError(f"cannot open the {resolved.spec.warehouse.describe()} warehouse")
    return adapter


__all__ = ["WAREHOUSES", "DuckDBWarehouse", "SnowflakeWarehouse", "WarehouseSpec", "connect_warehouse"]
