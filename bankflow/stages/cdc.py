"""Stage `cdc`: change events → Parquet in the lake, positions acknowledged only once files are durable.

`builtin` reads Postgres logical replication itself (the `local` environment); `debezium` registers the rendered
connector on Kafka Connect and consumes its topics. Both feed the same per-table batches and lake writer.
"""

from __future__ import annotations

import time
from typing import Any

from bankflow.errors import StageError
from bankflow.stages.base import RunContext, StageResult


def register_connector(ctx: RunContext, timeout: float = 90.0) -> dict[str, Any]:
    """Validate, then create-or-update the connector (PUT is idempotent), then wait until it runs."""
    from bankflow.cdc.connect_client import ConnectClient
    from bankflow.render.debezium import CONNECTOR_CLASS, connector_config

    spec = ctx.resolved.spec
    client = ConnectClient(spec.cdc.connect_url)
    config = connector_config(ctx.resolved, reveal=True)
    ctx.progress.update("cdc", f"validating connector {spec.cdc.connector}", force=True)
    errors = client.validate(CONNECTOR_CLASS, {"name": spec.cdc.connector, **config})
    if errors:
        lines = [f"  {field}: {'; '.join(messages)}" for field, messages in sorted(errors.items())]
        raise StageError(ctx.resolved.redact(
            f"Kafka Connect rejected connector {spec.cdc.connector!r}:\n" + "\n".join(lines)))
    live = client.connector_config(spec.cdc.connector)
    changed = live is None or {k: v for k, v in live.items() if k != "name"} != config
    if changed:
        client.put_config(spec.cdc.connector, config)
    status = client.wait_running(spec.cdc.connector, timeout=timeout)
    return {"connector": spec.cdc.connector, "created": live is None, "updated": changed and live is not None,
            "state": status.get("connector", {}).get("state")}


def run(ctx: RunContext) -> StageResult:
    started = time.monotonic()
    spec = ctx.resolved.spec
    result = StageResult("cdc")

    def progress(info: dict[str, Any]) -> None:
        events = int(info.get("events", 0))
        rate = events / max(time.monotonic() - started, 1e-6)
        ctx.progress.update("cdc", f"{events:,} events ({rate:,.0f}/s), {info.get('files', 0)} files")

    if spec.cdc.engine == "builtin":
        from bankflow.cdc.builtin import ensure_slot, stream_to_lake

        kwargs = ctx.source_connect_kwargs()
        ctx.progress.update("cdc", f"slot {spec.cdc.slot}", force=True)
        ensure_slot(ctx.resolved, kwargs)
        outcome: Any = stream_to_lake(ctx.resolved, kwargs, follow=ctx.follow, stop=ctx.stop, progress=progress)
    else:
        result.details["connector"] = register_connector(ctx)
        from bankflow.consume.kafka import consume_to_lake

        outcome = consume_to_lake(ctx.resolved, follow=ctx.follow, stop=ctx.stop, progress=progress)
    summary = outcome.to_dict() if hasattr(outcome, "to_dict") else dict(vars(outcome))
    # Snapshot reads ('r') are change events too: the first run of a slot may have nothing else.
    result.events = int(summary.get("events", 0)) + int(summary.get("snapshot_rows", 0) or 0)
    files = summary.get("files", [])
    result.files = len(files) if isinstance(files, list) else int(files)
    result.details.update({k: v for k, v in summary.items() if k != "files"})
    result.seconds = time.monotonic() - started
    return result
