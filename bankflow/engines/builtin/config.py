"""The spec's `cdc: {engine: builtin}` (the default): bankflow is the replication client."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from bankflow.engines.base import CdcConfig, EngineCapabilities

if TYPE_CHECKING:
    from bankflow.engines.builtin.engine import BuiltinEngine


class BuiltinCdc(CdcConfig):
    # It snapshots once, when it creates the slot, and then streams: no re-snapshots ("always", "initial_only").
    capabilities: ClassVar[EngineCapabilities] = EngineCapabilities(
        uses_kafka=False,
        snapshot_modes=frozenset({"initial", "when_needed", "no_data", "never"}),
        file_key_scheme="{layout}/{table}[-snapshot]-{commit:016X}.{lsn:016X}-{commit:016X}.{lsn:016X}.parquet  "
                        "(commit LSN and change LSN of the file's first and last events)",
        event_source="postgres-logical-replication",
        label="built-in engine",
        snapshot_note="it snapshots once, when it creates the slot, and then streams",
    )

    engine: Literal["builtin"] = "builtin"

    @classmethod
    def engine_class(cls) -> type[BuiltinEngine]:
        from bankflow.engines.builtin.engine import BuiltinEngine

        return BuiltinEngine
