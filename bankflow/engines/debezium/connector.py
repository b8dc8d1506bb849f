"""The Debezium Postgres connector config, rendered from the spec.

Money stays exact (`decimal.handling.mode=string`), timestamps keep microseconds, and the password reaches Kafka
Connect only as a config-provider reference (`${env:VAR}`), never in clear text.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from bankflow.engines.debezium.config import debezium_cdc
from bankflow.render.sql import quote_pg
from bankflow.source import source_server
from bankflow.source.ddl import HEARTBEAT_TABLE, SIGNAL_TABLE

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec

CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
REDACTED = "****"


def heartbeat_query(resolved: ResolvedSpec) -> str:
    """Keeps the slot advancing while the captured tables are idle (the source stage creates the table)."""
    table = f"{quote_pg(resolved.spec.source.schema_name)}.{quote_pg(HEARTBEAT_TABLE)}"
    return (f"INSERT INTO {table} (id, beat_at) VALUES (1, now()) "
            "ON CONFLICT (id) DO UPDATE SET beat_at = EXCLUDED.beat_at")


def include_regex(*parts: str) -> str:
    """A literal `schema.table` as one entry of Debezium's include lists (comma-separated Java regexes, each
    matched against the whole qualified name): `.` and every other ASCII punctuation or space escaped, a comma
    as `\\x2C` so it cannot split the list; letters (any case), digits and `_` as they are."""
    def char(c: str) -> str:
        if c.isalnum() or c == "_" or not c.isascii():
            return c
        return "\\." if c == "." else f"\\x{ord(c):02X}"
    return "\\.".join("".join(map(char, part)) for part in parts)


def connector_config(resolved: ResolvedSpec, *, reveal: bool = False) -> dict[str, str]:
    """The connector's config map. `reveal=False` masks a clear-text password for display."""
    spec = resolved.spec
    source, cdc = spec.source, debezium_cdc(spec)
    schema = source.schema_name
    config: dict[str, str] = {
        "connector.class": CONNECTOR_CLASS,
        "tasks.max": "1",
        "plugin.name": "pgoutput",
        "database.hostname": cdc.connect_database_host or source.host,
        "database.port": str(source.port),
        "database.user": source.user,
        "database.dbname": source.database,
        "database.sslmode": source.sslmode,
        "topic.prefix": cdc.topic_prefix,
        "slot.name": cdc.slot,
        "publication.name": cdc.publication,
        # Debezium creates the publication only where the spec lets bankflow manage it (source.manage)
        "publication.autocreate.mode": "filtered" if source_server(resolved).manages("publication") else "disabled",
        "schema.include.list": include_regex(schema),
        # the signal table is captured too (Debezium reads signals and its watermarks from the stream)
        "table.include.list": ",".join([*(include_regex(schema, t.name) for t in spec.tables),
                                        include_regex(schema, SIGNAL_TABLE)]),
        "snapshot.mode": cdc.snapshot_mode,
        # backfills (`bankflow.engines.debezium.backfill`): incremental snapshots started by a row in the signal
        # table, their progress reported to a notification topic bankflow reads
        "signal.data.collection": f"{schema}.{SIGNAL_TABLE}",
        "signal.enabled.channels": "source",
        "incremental.snapshot.chunk.size": str(cdc.backfill_chunk_rows),
        "notification.enabled.channels": "sink",
        "notification.sink.topic.name": cdc.notification_topic,
        "decimal.handling.mode": "string",
        "time.precision.mode": "adaptive_time_microseconds",
        "binary.handling.mode": "base64",
        "tombstones.on.delete": "false",
        "skipped.operations": "none",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "false",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "false",
        "max.batch.size": str(cdc.max_batch_size),
        # Debezium rejects a queue that is not larger than the batch (both default to 8192).
        "max.queue.size": str(cdc.max_batch_size * 4),
        "poll.interval.ms": str(cdc.poll_interval_ms),
        "producer.override.batch.size": "1048576",
        "producer.override.linger.ms": "20",
        "topic.creation.default.replication.factor": "1",
        "topic.creation.default.partitions": str(spec.kafka.partitions),
    }
    if cdc.heartbeat_interval_ms:
        config["heartbeat.interval.ms"] = str(cdc.heartbeat_interval_ms)
        config["heartbeat.action.query"] = heartbeat_query(resolved)
    variable = resolved.env_refs.get("source.password")
    if variable:
        config["database.password"] = "${env:" + variable + "}"
    elif source.password:
        config["database.password"] = source.password if reveal else REDACTED
    return config


def render_connector_json(resolved: ResolvedSpec, *, reveal: bool = False) -> str:
    body = {"name": debezium_cdc(resolved.spec).connector, "config": connector_config(resolved, reveal=reveal)}
    return json.dumps(body, indent=2, sort_keys=False) + "\n"
