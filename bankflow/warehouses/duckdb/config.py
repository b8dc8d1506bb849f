"""The spec's `warehouse: {type: duckdb}`: a DuckDB file beside the pipeline's state."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from bankflow.spec.base import check_identifier
from bankflow.warehouses.base import WarehouseCapabilities, WarehouseConfig

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Transform
    from bankflow.warehouses.adapter import WarehouseAdapter
    from bankflow.warehouses.duckdb.dialect import DuckDBDialect


class DuckDBWarehouse(WarehouseConfig):
    capabilities: ClassVar[WarehouseCapabilities] = WarehouseCapabilities(
        atomic_ledger=True, load_metadata_days=0, lake_schemes=frozenset({"file", "s3"}),
        one_process_at_a_time=True)

    type: Literal["duckdb"] = "duckdb"
    path: str = Field(".bankflow/warehouse.duckdb", description="relative paths: from the spec's directory")
    raw_schema: str = "raw"
    lock_wait_seconds: float = Field(60.0, ge=0, description="how long a load or transform waits for another "
                                     "process (e.g. a read-only session) to release the DuckDB file")

    @field_validator("raw_schema")
    @classmethod
    def _ident(cls, value: str) -> str:
        return check_identifier(value)

    def dialect(self) -> DuckDBDialect:
        from bankflow.warehouses.duckdb.dialect import DuckDBDialect

        return DuckDBDialect(self)

    def connect(self, resolved: ResolvedSpec, *, read_only: bool = False) -> WarehouseAdapter | None:
        from bankflow.warehouses.duckdb.adapter import DuckDBAdapter

        if read_only and not resolved.resolve_path(self.path).is_file():
            return None  # nothing loaded yet; opening would create the file
        return DuckDBAdapter(resolved, self, read_only=read_only)

    def dbt_profile(self, resolved: ResolvedSpec, transform: Transform) -> dict[str, Any]:
        return {"type": "duckdb", "path": str(resolved.resolve_path(self.path)),
                "schema": transform.target_schema, "threads": transform.threads}

    def describe(self) -> str:
        return f"duckdb {self.path}, raw schema {self.raw_schema}"

    @contextlib.contextmanager
    def held_for_transform(self, resolved: ResolvedSpec, what: str = "transform") -> Iterator[float]:
        """The file for the whole dbt cycle (waiting politely for another process's lock), so nobody takes it
        between steps; dbt-duckdb's connection is closed afterwards, so this process holds it no longer."""
        from bankflow.warehouses.duckdb import lock

        path = resolved.resolve_path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            with lock.holding(path, what=what, wait=lock.wait_seconds(resolved)):
                yield time.monotonic() - started
        finally:
            self.release_dbt()

    def release_dbt(self) -> None:
        """Close dbt-duckdb's database connection, which it keeps open between invocations (`keep_open` defaults
        to true): while it is open, this process holds the DuckDB file and every other process is locked out."""
        import sys

        module = sys.modules.get("dbt.adapters.duckdb.connections")
        if module is None:
            return  # dbt-duckdb never ran in this process
        manager = module.DuckDBConnectionManager
        with manager._LOCK:
            env = manager._ENV
            if env is not None:
                env.close()
