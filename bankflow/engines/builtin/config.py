"""The spec's `cdc: {engine: builtin}` (the default): bankflow is the replication client."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from bankflow.engines.base import CdcConfig, EngineCapabilities

if TYPE_CHECKING:
    from bankflow.engines.builtin.engine import BuiltinEngine


class BuiltinCdc(CdcConfig):
    # snapshot_mode on this engine (the slot is its offset store):
    #   initial, when_needed: snapshot when the slot is created (first run, or after `down --drop-slot`);
    #     a table new to the spec, or added back, is backfilled while streaming (bankflow.engines.builtin.backfill)
    #   always: that, and every run backfills every table again (while streaming)
    #   no_data, never: no snapshot, no automatic backfill: tables stream from when their stream starts
    #     (`bankflow backfill --table` reads existing rows on demand)
    # initial_only (snapshot, then no streaming) is not offered: use `bankflow backfill` for a one-off read.
    capabilities: ClassVar[EngineCapabilities] = EngineCapabilities(
        uses_kafka=False,
        snapshot_modes=frozenset({"initial", "when_needed", "always", "no_data", "never"}),
        file_key_scheme="{layout}/{table}[-snapshot]-{commit:016X}.{lsn:016X}.{seq:08X}-{commit:016X}.{lsn:016X}"
                        ".{seq:08X}.parquet  (commit LSN, change LSN and index in its transaction of the file's "
                        "first and last events)",
        event_source="postgres-logical-replication",
        label="built-in engine",
        snapshot_note="it always streams after its snapshot (initial_only would stop after it); for a one-off "
                      "read of a table use `bankflow backfill SPEC --table T`",
    )

    engine: Literal["builtin"] = "builtin"
    backfill_chunk_rows: int = Field(
        10_000, ge=1, le=1_000_000,
        description="rows per chunk of a backfill (tables new to the spec, `bankflow backfill`): each chunk is one "
                    "SELECT between two watermarks while the stream goes on")

    @classmethod
    def engine_class(cls) -> type[BuiltinEngine]:
        from bankflow.engines.builtin.engine import BuiltinEngine

        return BuiltinEngine
