"""`status`: is everything up, how far behind is the slot, what is in the lake and in raw, how did the last run go."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec


def _source_status(resolved: ResolvedSpec) -> dict[str, Any]:
    from bankflow.stages.source import embedded_server, source_connect_kwargs

    spec = resolved.spec
    info: dict[str, Any] = {"embedded": spec.source.embedded}
    if spec.source.embedded:
        server = embedded_server(resolved)
        info["up"] = server.is_running()
        if not info["up"]:
            return info
    try:
        import psycopg2

        conn = psycopg2.connect(**source_connect_kwargs(resolved, start=False))
    except Exception as exc:
        info.update(up=False, error=resolved.redact(str(exc).strip()))
        return info
    info["up"] = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT active, confirmed_flush_lsn::text, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, pg_current_wal_lsn()::text "
                "FROM pg_replication_slots WHERE slot_name = %s", (spec.cdc.slot,))
            row = cur.fetchone()
            info["slot"] = None if row is None else {
                "name": spec.cdc.slot, "active": row[0], "confirmed_flush_lsn": row[1], "lag_bytes": row[2],
                "current_wal_lsn": row[3]}
    finally:
        conn.close()
    return info


def _connector_status(resolved: ResolvedSpec) -> dict[str, Any]:
    """The Debezium connector's state and its tasks' states, as Kafka Connect reports them."""
    from bankflow.cdc.connect_client import ConnectClient, ConnectUnreachable

    cdc = resolved.spec.cdc
    info: dict[str, Any] = {"name": cdc.connector, "url": cdc.connect_url}
    try:
        body = ConnectClient(cdc.connect_url, timeout=5.0).status(cdc.connector)
    except ConnectUnreachable as exc:
        info["error"] = str(exc)
        return info
    if body is None:
        info["state"] = "NOT REGISTERED"
        return info
    info["state"] = body.get("connector", {}).get("state")
    info["tasks"] = [{"id": t.get("id"), "state": t.get("state"),
                      **({"trace": str(t["trace"]).splitlines()[0]} if t.get("trace") else {})}
                     for t in body.get("tasks", [])]
    return info


def _consumer_status(resolved: ResolvedSpec, timeout: float = 5.0) -> dict[str, Any]:
    """Per topic: the group's committed offsets against the high watermarks, i.e. what the lake is missing."""
    info: dict[str, Any] = {"group": resolved.spec.kafka.group, "topics": {}}
    try:
        from confluent_kafka import Consumer, TopicPartition

        from bankflow.consume.kafka import consumer_config, topic_partitions

        found, missing = topic_partitions(resolved, timeout=timeout)
        consumer = Consumer(consumer_config(resolved), logger=logging.getLogger(__name__))  # no join: no rebalance
        try:
            committed = consumer.committed([TopicPartition(t, p) for t, p in found], timeout=timeout)
            for tp in committed:
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
                offset = tp.offset if tp.offset >= 0 else low  # nothing committed: the group starts at the earliest
                topic = info["topics"].setdefault(tp.topic, {"partitions": 0, "committed": 0, "end": 0,
                                                             "lag": 0})
                topic["partitions"] += 1
                topic["committed"] += offset
                topic["end"] += high
                topic["lag"] += max(high - offset, 0)
        finally:
            consumer.close()
        for topic in missing:
            info["topics"][topic] = None  # Debezium creates a topic with the table's first event
    except Exception as exc:
        detail = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)  # KafkaError
        info["error"] = resolved.redact(f"cannot read from Kafka at {resolved.spec.kafka.bootstrap_servers}: "
                                        f"{detail.strip()}")
    return info


def _lake_status(resolved: ResolvedSpec) -> dict[str, Any]:
    from bankflow.stages.load import lake_files

    info: dict[str, Any] = {"url": resolved.spec.lake.url, "tables": {}}
    try:
        import pyarrow.parquet as pq

        from bankflow.lake.filesystem import lake_filesystem

        fs, root = lake_filesystem(resolved)
        for table in resolved.spec.tables:
            keys = lake_files(resolved, table)
            rows = 0
            for key in keys:
                with fs.open(f"{root.rstrip('/')}/{key}", "rb") as handle:
                    rows += pq.ParquetFile(handle).metadata.num_rows
            info["tables"][table.name] = {"files": len(keys), "rows": rows}
        dead = f"{root.rstrip('/')}/{resolved.spec.lake.dead_letter}"
        info["dead_letter_files"] = len(fs.find(dead)) if fs.exists(dead) else 0
    except Exception as exc:
        info["error"] = resolved.redact(str(exc).strip())
    return info


def _warehouse_status(resolved: ResolvedSpec) -> dict[str, Any]:
    from bankflow.render.warehouse import qualified_raw_table
    from bankflow.warehouse import connect_warehouse

    info: dict[str, Any] = {"type": resolved.spec.warehouse.type, "tables": {}}
    try:
        adapter = connect_warehouse(resolved)
    except Exception as exc:
        info["error"] = resolved.redact(str(exc).strip())
        return info
    try:
        for table in resolved.spec.tables:
            try:
                rows = adapter.query(f"SELECT count(*) FROM {qualified_raw_table(resolved, table)}")[0][0]
                files = len(adapter.ledger_keys(table))
            except Exception:
                rows, files = None, 0
            info["tables"][table.raw_name] = {"rows": rows, "files_loaded": files}
    finally:
        adapter.close()
    return info


def collect_status(resolved: ResolvedSpec) -> dict[str, Any]:
    last_run_path = resolved.state_dir / "last_run.json"
    last_run = json.loads(last_run_path.read_text(encoding="utf-8")) if last_run_path.is_file() else None
    return {
        "pipeline": resolved.spec.name,
        "env": resolved.env,
        "source": _source_status(resolved),
        **({"connector": _connector_status(resolved), "consumer": _consumer_status(resolved)}
           if resolved.spec.cdc.engine == "debezium" else {}),
        "lake": _lake_status(resolved),
        "warehouse": _warehouse_status(resolved),
        "last_run": None if last_run is None else {
            k: last_run.get(k) for k in ("run_id", "started_at", "ok", "seconds")
        } | {"stages": {s["name"]: {"ok": s["ok"], "seconds": round(s["seconds"], 2), "events": s["events"],
                                    "rows": s["rows"], "files": s["files"]} for s in last_run.get("stages", [])}},
    }


def format_status(status: dict[str, Any]) -> str:
    lines = [f"pipeline {status['pipeline']} (environment: {status['env'] or 'default'})"]
    source = status["source"]
    lines.append(f"  source     {'up' if source.get('up') else 'down'}"
                 + (" (embedded)" if source.get("embedded") else "")
                 + (f"  error: {source['error']}" if source.get("error") else ""))
    slot = source.get("slot")
    if slot:
        lines.append(f"  slot       {slot['name']}: confirmed {slot['confirmed_flush_lsn']}, lag "
                     f"{slot['lag_bytes']:,} bytes, {'active' if slot['active'] else 'idle'}")
    elif source.get("up"):
        lines.append("  slot       not created yet")
    connector = status.get("connector")
    if connector:
        if connector.get("error"):
            lines.append(f"  connector  {connector['name']}: {connector['error']}")
        else:
            tasks = ", ".join(f"task {t['id']} {t['state']}" + (f" ({t['trace']})" if t.get("trace") else "")
                              for t in connector.get("tasks", []))
            lines.append(f"  connector  {connector['name']}: {connector['state']}" + (f"; {tasks}" if tasks else ""))
    consumer = status.get("consumer")
    if consumer:
        if consumer.get("error"):
            lines.append(f"  consumer   group {consumer['group']}: {consumer['error']}")
        for topic, info in consumer.get("topics", {}).items():
            if info is None:
                lines.append(f"  consumer   {topic}: no topic yet")
            else:
                lines.append(f"  consumer   {topic}: committed {info['committed']:,} of {info['end']:,}, "
                             f"lag {info['lag']:,} ({info['partitions']} partition(s))")
    lake = status["lake"]
    for name, info in lake.get("tables", {}).items():
        lines.append(f"  lake       {name}: {info['files']} file(s), {info['rows']:,} row(s)")
    if lake.get("error"):
        lines.append(f"  lake       {lake['url']}: {lake['error']}")
    if lake.get("dead_letter_files"):
        lines.append(f"  dead letters: {lake['dead_letter_files']} file(s)")
    for name, info in status["warehouse"].get("tables", {}).items():
        rows = "-" if info["rows"] is None else f"{info['rows']:,}"
        lines.append(f"  raw        {name}: {rows} row(s), {info['files_loaded']} file(s) loaded")
    if status["warehouse"].get("error"):
        lines.append(f"  warehouse  error: {status['warehouse']['error']}")
    run = status.get("last_run")
    if run:
        stages = ", ".join(f"{n} {s['seconds']}s" for n, s in run["stages"].items())
        lines.append(f"  last run   {run['started_at']} {'ok' if run['ok'] else 'FAILED'} ({stages})")
    else:
        lines.append("  last run   none")
    return "\n".join(lines)
