"""The consumer topology as a JSON document: what each topic becomes in the lake and the warehouse."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bankflow.spec.types import CDC_COLUMNS

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table

# CDC columns every lake row carries; `_tx_id` and `_source_ts` may be unknown (as `bankflow.lake` writes them).
CDC_ALWAYS_SET = ("_op", "_lsn", "_file")


def lake_nullable(table: Table, column: str) -> bool:
    """Nullability in the lake: with REPLICA IDENTITY DEFAULT a delete carries only the key, so every non-key
    column may be null there even when it is NOT NULL in the source."""
    key_only_deletes = table.replica_identity == "default" and column not in table.primary_key
    return table.column(column).nullable or key_only_deletes


def topology(resolved: ResolvedSpec) -> dict[str, Any]:
    spec = resolved.spec
    lake = spec.lake
    capabilities = spec.cdc.capabilities
    streams = []
    for table in spec.tables:
        topic = spec.topic_for(table)
        streams.append({
            "topic": topic,
            "table": f"{spec.source.schema_name}.{table.name}",
            "raw_table": f"{spec.warehouse.raw_schema}.{table.raw_name}",
            "primary_key": list(table.primary_key),
            "arrow_schema": [
                {"name": c.name, "type": c.pg_type.arrow, "nullable": lake_nullable(table, c.name)}
                for c in table.columns
            ] + [{"name": n, "type": t.arrow, "nullable": n not in CDC_ALWAYS_SET} for n, t in CDC_COLUMNS],
            "lake_path": f"{lake.url}/{lake.layout}",
            "file_key": capabilities.file_key_scheme,
        })
    return {
        "pipeline": spec.name,
        "environment": resolved.env,
        "engine": spec.cdc.engine,
        "event_source": capabilities.event_source,
        "consumer_group": spec.kafka.group if capabilities.uses_kafka else None,
        "flush": lake.flush.model_dump(),
        "compression": lake.compression,
        "dead_letter": f"{lake.url}/{lake.dead_letter}",
        "streams": streams,
    }


def render_topology_json(resolved: ResolvedSpec) -> str:
    return json.dumps(topology(resolved), indent=2) + "\n"
