"""Warehouse adapters behind one small interface (`WarehouseAdapter`), chosen by the spec's `warehouse.type`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.warehouse.base import WarehouseAdapter


def connect_warehouse(resolved: ResolvedSpec) -> WarehouseAdapter:
    if resolved.spec.warehouse.type == "snowflake":
        from bankflow.warehouse.snowflake import SnowflakeAdapter

        return SnowflakeAdapter(resolved)
    from bankflow.warehouse.duckdb import DuckDBAdapter

    return DuckDBAdapter(resolved)
