"""The Debezium engine's side of the `cdc` stage: register the connector, then wait until Kafka holds the source.

A catch-up run must not stop at whatever happens to be in Kafka: Debezium may still be snapshotting, polling or
batching what the source committed. `wait_for_debezium` is the barrier: it commits a marker in the source and
waits until the connector has durably produced past it; only then does the consumer catch up to the topics' ends.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bankflow.engines.debezium.config import debezium_cdc
from bankflow.errors import StageError
from bankflow.lake.positions import lsn_text, parse_lsn
from bankflow.stages.base import RunContext

log = logging.getLogger(__name__)
MARKER_PREFIX = "bankflow.catchup"  # logical decoding messages; Debezium publishes them to `<topic_prefix>.message`


def register_connector(ctx: RunContext, timeout: float = 90.0) -> dict[str, Any]:
    """Validate, then create-or-update the connector (PUT is idempotent), then wait until it runs."""
    from bankflow.engines.debezium.connector import CONNECTOR_CLASS, connector_config

    spec = ctx.resolved.spec
    cdc = debezium_cdc(spec)
    client = cdc.connect_client()
    config = connector_config(ctx.resolved, reveal=True)
    ctx.progress.update("cdc", f"validating connector {cdc.connector}", force=True)
    errors = client.validate(CONNECTOR_CLASS, {"name": cdc.connector, **config})
    if errors:
        lines = [f"  {field}: {'; '.join(messages)}" for field, messages in sorted(errors.items())]
        raise StageError(ctx.resolved.redact(
            f"Kafka Connect rejected connector {cdc.connector!r}:\n" + "\n".join(lines)))
    live = client.connector_config(cdc.connector)
    changed = live is None or {k: v for k, v in live.items() if k != "name"} != config
    if changed:
        client.put_config(cdc.connector, config)
    status = client.wait_running(cdc.connector, timeout=timeout)
    return {"connector": cdc.connector, "created": live is None, "updated": changed and live is not None,
            "state": status.get("connector", {}).get("state")}


def keep_registered(ctx: RunContext, stop: threading.Event, interval: float = 10.0) -> threading.Thread:
    """While a follow run streams, re-register the connector when Kafka Connect has lost it (a standalone worker
    restarted keeps no connector created over REST); it resumes from the offsets Connect kept. A daemon thread
    that ends with `stop`."""
    from bankflow.engines.debezium.connect import ConnectUnreachable
    from bankflow.engines.debezium.connector import connector_config

    cdc = debezium_cdc(ctx.resolved.spec)
    config = connector_config(ctx.resolved, reveal=True)

    def watch() -> None:
        client = cdc.connect_client(timeout=5.0)
        while not stop.wait(interval):
            try:
                if client.connector_config(cdc.connector) is None:
                    log.warning("connector %s is gone from Kafka Connect (a worker restarted?): registering it "
                                "again; it resumes from Connect's offsets", cdc.connector)
                    client.put_config(cdc.connector, config)
            except ConnectUnreachable as exc:
                log.warning("Kafka Connect unreachable, will retry: %s", exc)
            except Exception as exc:  # keep watching: a failed re-registration is retried next time
                log.warning("connector %s could not be registered again: %s", cdc.connector,
                            ctx.resolved.redact(str(exc)))

    thread = threading.Thread(target=watch, name="bankflow-connector-keeper", daemon=True)
    thread.start()
    return thread


def _offset_lsn(client: Any, connector: str) -> int:
    """The highest LSN in the connector's committed offsets (-1 when there is none or the API is missing)."""
    best = -1
    for offset in client.offsets(connector) or []:
        for key in ("lsn", "lsn_commit", "lsn_proc"):
            value = offset.get(key)
            if isinstance(value, int) and value > best:
                best = value
    return best


def wait_for_debezium(ctx: RunContext, timeout: float = 600.0, poll: float = 0.25) -> dict[str, Any]:
    """Return once everything the source committed before this call is in Kafka (acknowledged by the broker).

    1. Wait until the connector's slot exists and has reached its consistent point (`confirmed_flush_lsn` set):
       what is committed after that is streamed, after the initial snapshot if there is one.
    2. Commit a transactional logical decoding message (`pg_logical_emit_message`, LSN M) and take
       `pg_current_wal_lsn()` right after the commit (T, the end of the marker's commit record). A message,
       unlike a row in an uncaptured table (the heartbeat table is not in the publication), is always decoded,
       so the connector passes it even when the captured tables are idle and other databases write WAL.
    3. Wait until either Connect's committed offset for the connector has `lsn` ≥ M (the marker's own event;
       `GET /connectors/{name}/offsets`), or the slot's `confirmed_flush_lsn` ≥ T (Debezium flushes a commit's
       end LSN only when a later record - a change or a heartbeat - carries it). Connect commits an offset only
       once the broker acknowledged every record before it, and every transaction committed before the marker
       is decoded, and produced, before it.

    The wait lasts about Connect's `offset.flush.interval.ms` (1 s in bankflow's test worker and in compose/,
    60 s in a worker left at Kafka's default).
    A FAILED connector ends the wait with its trace.
    """
    import psycopg2


    spec = ctx.resolved.spec
    cdc = debezium_cdc(spec)
    client = cdc.connect_client()
    started = time.monotonic()
    deadline = started + timeout
    conn = psycopg2.connect(**ctx.source_connect_kwargs())
    conn.autocommit = True
    last_status = 0.0
    target: int | None = None
    marker: int | None = None
    flushed: int | None = None

    def check_connector() -> None:
        nonlocal last_status
        if time.monotonic() - last_status >= 2.0:
            last_status = time.monotonic()
            client.wait_running(cdc.connector, timeout=30.0)  # raises on FAILED

    try:
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                            "WHERE slot_name = %s AND database = current_database()", (cdc.slot,))
                row = cur.fetchone()
                flushed = parse_lsn(row[0]) if row and row[0] else None
                if target is None and flushed is not None:
                    cur.execute("BEGIN")
                    cur.execute("SELECT pg_logical_emit_message(true, %s, %s)::text",
                                (MARKER_PREFIX, str(time.time())))
                    marker = parse_lsn(cur.fetchone()[0])
                    cur.execute("COMMIT")
                    cur.execute("SELECT pg_current_wal_lsn()::text")
                    target = parse_lsn(cur.fetchone()[0])
                    ctx.progress.update("cdc", f"waiting for {cdc.connector} to pass the source's position",
                                        force=True)
                    continue
                if target is not None and flushed is not None and flushed >= target:
                    break
                if marker is not None and _offset_lsn(client, cdc.connector) >= marker:
                    break
                if time.monotonic() > deadline:
                    where = ("its slot does not exist yet" if row is None else
                             "its slot has not reached a consistent point" if target is None else
                             f"its slot is at {row[0]}, the source was at {lsn_text(target)}")
                    raise StageError(f"connector {cdc.connector!r} did not catch up with the source within "
                                     f"{timeout:.0f}s: {where}")
                check_connector()
                time.sleep(poll)
    finally:
        conn.close()
    return {"source_lsn": lsn_text(target) if target is not None else None,
            "wait_seconds": round(time.monotonic() - started, 3)}
