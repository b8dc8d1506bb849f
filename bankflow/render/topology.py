"""The consumer topology as a JSON document: what each topic becomes in the lake and the warehouse."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bankflow.spec.types import CDC_COLUMNS

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec

FILE_KEY_SCHEMES = {
    "builtin": "{layout}/lsn-{start_lsn:016X}-{end_lsn:016X}.parquet  (LSN range of the file's events)",
    "debezium": "{layout}/p{partition}-{start_offset:020d}-{end_offset:020d}.parquet  (Kafka offset range)",
}


def topology(resolved: ResolvedSpec) -> dict[str, Any]:
    spec = resolved.spec
    lake = spec.lake
    streams = []
    for table in spec.tables:
        topic = spec.topic_for(table)
        streams.append({
            "topic": topic,
            "table": f"{spec.source.schema_name}.{table.name}",
            "raw_table": f"{spec.warehouse.raw_schema}.{table.raw_name}",
            "primary_key": list(table.primary_key),
            "arrow_schema": [
                {"name": c.name, "type": c.pg_type.arrow, "nullable": c.nullable} for c in table.columns
            ] + [{"name": n, "type": t.arrow, "nullable": n not in ("_op", "_lsn")} for n, t in CDC_COLUMNS],
            "lake_path": f"{lake.url}/{lake.layout}",
            "file_key": FILE_KEY_SCHEMES[spec.cdc.engine],
        })
    return {
        "pipeline": spec.name,
        "environment": resolved.env,
        "engine": spec.cdc.engine,
        "event_source": "kafka" if spec.cdc.engine == "debezium" else "postgres-logical-replication",
        "consumer_group": spec.kafka.group if spec.cdc.engine == "debezium" else None,
        "flush": lake.flush.model_dump(),
        "compression": lake.compression,
        "dead_letter": f"{lake.url}/{lake.dead_letter}",
        "streams": streams,
    }


def render_topology_json(resolved: ResolvedSpec) -> str:
    return json.dumps(topology(resolved), indent=2) + "\n"
