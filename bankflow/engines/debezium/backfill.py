"""Backfills of the Debezium engine: Debezium's incremental snapshots, started and watched by bankflow.

Which tables the connector's stream covers is kept in the lake as on the built-in engine (one coverage marker
per table, `bankflow.source.backfill.Coverage`, under the slot's name). A spec table without a marker
is new to the spec or added back (a table that leaves the spec loses its marker), so it is backfilled;
`bankflow backfill --table T [--where …]` writes a ``backfilling`` marker on demand.

A backfill is one ``execute-snapshot`` signal (type ``incremental``) inserted into the signal table
(`bankflow.source.ddl.SIGNAL_TABLE`, in the publication and in ``signal.data.collection``). Debezium then reads
the table in primary-key chunks between two watermarks it writes to that table (DBLog), drops the chunk's rows
whose key changed inside the window and emits the rest as op ``r`` events in the table's topic, while the
stream goes on. Those rows carry no ``source.lsn``; the lake takes the LSN of the window's close from
``source.sequence`` (`bankflow.lake.decode.incremental_snapshot_lsn`), which orders them against every change
of their key. Debezium reports progress to the notification topic (`DebeziumCdc.notification_topic`) under the
signal's id: ``STARTED``, ``IN_PROGRESS``, ``TABLE_SCAN_COMPLETED`` per table, ``COMPLETED`` or ``ABORTED``.

A catch-up `apply` sends the signal (once: the marker keeps its id, and a signal row already in the table is
not inserted again), waits for ``COMPLETED``, lets the barrier and the consumer carry the rows into the lake, and
then sweeps the keys the lake has live that the source no longer has (rows deleted while the table was out of
the spec: an incremental snapshot reads what exists, it cannot say what was deleted). Those become op ``d``
rows one byte before the source's WAL position of the sweep, in a lake file of the table's ``<topic>-backfill``
stream whose key is fixed by the marker (a re-run of an interrupted sweep writes the same key). Then the marker
says ``covered``.

What bankflow writes on the source: the signal row (INSERT into its own signal table), nothing else.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from bankflow.engines.debezium.config import debezium_cdc
from bankflow.engines.debezium.connector import include_regex
from bankflow.errors import BankflowError, StageError
from bankflow.lake.filesystem import lake_filesystem
from bankflow.lake.positions import LsnPosition
from bankflow.render.sql import quote_pg
from bankflow.source.backfill import Coverage, checked_where, covered, live_keys
from bankflow.source.backfill import plan as shared_plan
from bankflow.source.ddl import SIGNAL_TABLE, qualified
from bankflow.spec.loader import ResolvedSpec
from bankflow.spec.models import Table

log = logging.getLogger(__name__)

SWEEP_STREAM_SUFFIX = "-backfill"
_SWEEP_KEYS = 5_000  # keys per existence check in the source


def coverage_of(resolved: ResolvedSpec) -> Coverage:
    fs, root = lake_filesystem(resolved)
    return Coverage(fs, root, resolved.spec.cdc.slot)


def plan(resolved: ResolvedSpec, coverage: Coverage, *, fresh: bool, has_files: Callable[[Table], bool]
         ) -> list[dict[str, Any]]:
    """The backfills to run now (`bankflow.source.backfill.plan`). `fresh`: the connector is new and the lake
    empty, so its initial snapshot (per snapshot_mode) covers every table. Under snapshot_mode ``always``
    Debezium snapshots every table at each start itself, so no run asks for more."""
    if fresh:
        mode = resolved.spec.cdc.snapshot_mode
        how = ("initial snapshot" if mode in ("initial", "when_needed", "always", "initial_only")
               else f"stream only (snapshot_mode {mode})")
        coverage.cover_all(list(resolved.spec.tables), None, how)
    return shared_plan(resolved, coverage, fresh_slot=fresh, position=None, has_files=has_files,
                       backfill_always=False)


def request(resolved: ResolvedSpec, table: str, where: str | None) -> dict[str, Any]:
    """`bankflow backfill --table`: a ``backfilling`` marker (the next catch-up run signals and waits for it)."""
    from bankflow.source.backfill import request as write_request

    by_name = {t.name: t for t in resolved.spec.tables}
    if table not in by_name:
        raise BankflowError(f"table {table!r} is not a table of the spec; choose from {', '.join(by_name)}")
    return write_request(coverage_of(resolved), by_name[table], where)


# ---------------------------------------------------------------- the signal

def signal_data(resolved: ResolvedSpec, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The execute-snapshot signal's data: the tables (Debezium matches these as regexes: escaped), and each
    --where as an additional condition (its filter is SQL Debezium appends to the chunk query)."""
    schema = resolved.spec.source.schema_name
    data: dict[str, Any] = {"data-collections": [include_regex(schema, r["table"]) for r in records],
                            "type": "incremental"}
    conditions = [{"data-collection": f"{schema}.{r['table']}", "filter": checked_where(r["where"])}
                  for r in records if r.get("where")]
    if conditions:
        data["additional-conditions"] = conditions
    return data


def send_signal(resolved: ResolvedSpec, connect_kwargs: dict[str, Any], coverage: Coverage,
                records: list[dict[str, Any]]) -> str | None:
    """Signal the backfills that have no signal yet, or whose signal row is not in the signal table (a run that
    stopped between writing the marker and the INSERT). One signal for them all; returns its id."""
    import psycopg2

    if not records:
        return None
    conn = psycopg2.connect(**connect_kwargs)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            table = qualified(resolved, SIGNAL_TABLE)
            unsent = []
            for record in records:
                if record.get("signal"):
                    cur.execute(f"SELECT 1 FROM {table} WHERE id = %s", (record["signal"],))
                    if cur.fetchone() is not None:
                        continue
                unsent.append(record)
            if not unsent:
                return None
            signal = f"bankflow-{uuid.uuid4().hex}"
            for record in unsent:  # the marker first: a restart finds the id and looks for the row
                record["signal"] = signal
                record["signalled_at"] = time.time()
                coverage.write(record["table"], record)
            data = orjson.dumps(signal_data(resolved, unsent)).decode()
            if len(data) > 2048:
                raise StageError(f"the backfill signal for {', '.join(r['table'] for r in unsent)} is "
                                 f"{len(data)} characters; the signal table holds 2048: shorten --where")
            cur.execute(f"INSERT INTO {table} (id, type, data) VALUES (%s, 'execute-snapshot', %s)",
                        (signal, data))
            log.info("backfill of %s signalled to Debezium (%s)", ", ".join(r["table"] for r in unsent), signal)
            return signal
    finally:
        conn.close()


# ---------------------------------------------------------------- Debezium's notifications

def read_notifications(resolved: ResolvedSpec, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every notification in the topic, oldest first (a fresh reader, no group: nothing is committed)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from bankflow.engines.debezium.consumer import consumer_config

    cdc = debezium_cdc(resolved.spec)
    config = {**consumer_config(resolved), "group.id": f"bankflow-notifications-{uuid.uuid4().hex[:8]}"}
    consumer = Consumer(config, logger=log)
    out: list[dict[str, Any]] = []
    try:
        topic = consumer.list_topics(cdc.notification_topic, timeout=timeout).topics.get(cdc.notification_topic)
        if topic is None or topic.error is not None or not topic.partitions:
            return out
        for partition in topic.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(cdc.notification_topic, partition),
                                                       timeout=timeout, cached=False)
            if high <= low:
                continue
            consumer.assign([TopicPartition(cdc.notification_topic, partition, OFFSET_BEGINNING)])
            deadline = time.monotonic() + timeout
            position = low
            while time.monotonic() < deadline:
                message = consumer.poll(0.2)
                if message is None and position >= high:
                    break  # past the watermark and nothing more (Tansu reports watermarks a little low)
                if message is None or message.error() is not None:
                    continue
                position = (message.offset() or 0) + 1
                try:
                    value = orjson.loads(message.value() or b"null")
                except orjson.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    out.append(value)
    finally:
        consumer.close()
    return out


def backfill_state(notifications: list[dict[str, Any]], signal: str) -> dict[str, Any]:
    """What Debezium said about one signal: ``state`` (waiting, running, completed, aborted), per-table rows
    scanned, and the last progress note."""
    state: dict[str, Any] = {"state": "waiting", "tables": {}, "progress": None}
    for note in notifications:
        if note.get("id") != signal or note.get("aggregate_type") != "Incremental Snapshot":
            continue
        kind = note.get("type")
        extra = note.get("additional_data") or {}
        if kind in ("STARTED", "IN_PROGRESS", "RESUMED", "PAUSED"):
            state["state"] = "running"
            if kind == "IN_PROGRESS":
                state["progress"] = (f"{extra.get('current_collection_in_progress')}: key "
                                     f"{extra.get('last_processed_key')} of {extra.get('maximum_key')}")
        elif kind == "TABLE_SCAN_COMPLETED":
            collection = str(extra.get("scanned_collection", ""))
            state["tables"][collection.rsplit(".", 1)[-1]] = {
                "rows": int(extra.get("total_rows_scanned") or 0), "status": extra.get("status")}
        elif kind == "COMPLETED":
            state["state"] = "completed"
        elif kind == "ABORTED":
            state["state"] = "aborted"
    return state


def wait_for_backfills(resolved: ResolvedSpec, records: list[dict[str, Any]], *,
                       progress: Callable[[str], None], check_connector: Callable[[], object],
                       timeout: float, poll: float = 1.0) -> dict[str, int]:
    """Until Debezium has completed the signal of every record; returns rows scanned per table. A signal
    Debezium aborted, a table scan that did not succeed, a failed connector or the timeout stop the run."""
    signals = {r["signal"] for r in records}
    deadline = time.monotonic() + timeout
    scanned: dict[str, int] = {}
    while True:
        notifications = read_notifications(resolved)
        waiting = []
        for signal in sorted(signals):
            state = backfill_state(notifications, signal)
            tables = [r["table"] for r in records if r["signal"] == signal]
            for table in tables:
                info = state["tables"].get(table)
                if info is not None and info.get("status") not in (None, "SUCCEEDED"):
                    raise StageError(f"Debezium's backfill of {table} ended with {info.get('status')}: see the "
                                     "Kafka Connect log; run `bankflow backfill` again once it is fixed")
            if state["state"] == "aborted":
                raise StageError(f"Debezium aborted the backfill of {', '.join(tables)} ({signal}); run "
                                 "`bankflow backfill SPEC --table T` to ask again")
            if state["state"] == "completed" or all(t in state["tables"] for t in tables):
                scanned.update({t: int(state["tables"].get(t, {}).get("rows", 0)) for t in tables})
            else:
                waiting.append((tables, state))
        if not waiting:
            return scanned
        tables, state = waiting[0]
        progress(f"Debezium backfills {', '.join(tables)}" + (f" ({state['progress']})" if state["progress"]
                                                               else f" ({state['state']})"))
        if time.monotonic() > deadline:
            raise StageError(f"Debezium did not finish the backfill of {', '.join(tables)} within {timeout:.0f}s "
                             f"(it is {state['state']}); the connector goes on with it: run apply again later, "
                             "or raise cdc.backfill_timeout_s")
        check_connector()
        time.sleep(poll)


# ---------------------------------------------------------------- after the rows are in the lake

def wait_consumed(resolved: ResolvedSpec, topics: list[str], stop: Any, poll: float = 1.0) -> bool:
    """Until the group's committed offsets reach the topics' ends as they are now (follow mode: the running
    consumers have put everything up to here in the lake); False when `stop` is set first."""
    from confluent_kafka import Consumer, TopicPartition

    from bankflow.engines.debezium.consumer import consumer_config, topic_partitions

    consumer = Consumer(consumer_config(resolved), logger=log)  # no subscribe: no rebalance
    try:
        found, _missing = topic_partitions(resolved, timeout=10.0)
        wanted = [TopicPartition(t, p) for t, p in found if t in topics]
        ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10.0, cached=False)[1]
                for tp in wanted}
        while not stop.is_set():
            committed = consumer.committed(wanted, timeout=10.0)
            if all(tp.offset >= ends[(tp.topic, tp.partition)] for tp in committed):
                return True
            stop.wait(poll)
        return False
    finally:
        consumer.close()


def finish(resolved: ResolvedSpec, connect_kwargs: dict[str, Any], coverage: Coverage,
           records: list[dict[str, Any]], scanned: dict[str, int]) -> dict[str, int]:
    """Once the backfilled rows are in the lake: the deletes the source had while a table was out of the spec
    (see the module docstring), then the markers say ``covered``. Returns deletes written per table."""
    from bankflow.lake.writer import LakeWriter

    spec = resolved.spec
    fs, root = lake_filesystem(resolved)
    writer = LakeWriter(fs, root, spec.lake)
    deletes: dict[str, int] = {}
    for record in records:
        table = spec.table(record["table"])
        if not record.get("where"):
            deletes[table.name] = _sweep(resolved, connect_kwargs, writer, coverage, record, table)
        previous = record.get("previous") or {}
        done = covered(table.name, previous.get("since_lsn"), previous.get("how", "backfill") if previous
                       else "backfill")
        done["backfill"] = {"id": record["id"], "reason": record.get("reason"), "where": record.get("where"),
                            "signal": record.get("signal"), "rows": scanned.get(table.name, 0),
                            "deletes": deletes.get(table.name, 0)}
        coverage.write(table.name, done)
        log.info("backfill of %s complete: %d rows read by Debezium, %d deletes", table.name,
                 scanned.get(table.name, 0), deletes.get(table.name, 0))
    return deletes


def _sweep(resolved: ResolvedSpec, connect_kwargs: dict[str, Any], writer: Any, coverage: Coverage,
           record: dict[str, Any], table: Table) -> int:
    import psycopg2

    from bankflow.lake.batch import TableBatch

    spec = resolved.spec
    topic = spec.topic_for(table)
    live, _ = live_keys(writer.fs, writer.directory(table=table.name, schema=spec.source.schema_name, topic=topic),
                        list(table.primary_key))
    if not live:
        return 0
    conn = psycopg2.connect(**connect_kwargs)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            if record.get("sweep_lsn") is None:  # fixed before the file: a re-run writes the same key
                cur.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
                record["sweep_lsn"] = int(cur.fetchone()[0])
                coverage.write(table.name, record)
            gone = _absent(cur, resolved, table, sorted(live, key=repr))
    finally:
        conn.close()
    if not gone:
        return 0
    stream = f"{topic}{SWEEP_STREAM_SUFFIX}"
    batch = TableBatch(table, stream=stream, schema=spec.source.schema_name, topic=topic)
    # One byte before the WAL position read for the sweep: the next WAL record may start exactly there (a
    # DELETE the workload made of a key this sweep also finds gone, seen in CI), and its change must keep a
    # (key, _lsn) of its own. No record starts one byte before it (WAL records start 8-byte aligned), and
    # every change the lake had when the sweep read its live keys is older still.
    at = int(record["sweep_lsn"]) - 1
    now_us = int(time.time() * 1_000_000)
    for i, key in enumerate(gone):
        before = dict(zip(table.primary_key, key, strict=True))
        event = {"op": "d", "before": before, "after": None,
                 "source": {"lsn": at, "txId": None, "ts_us": now_us, "table": table.name}}
        batch.append_debezium(event, LsnPosition(at, i))
    key = writer.key_for(batch)
    if writer.fs.exists(key):
        return len(gone)
    writer.write_batch(batch)
    log.info("backfill of %s: %d key(s) the lake had live are gone from the source: written as deletes",
             table.name, len(gone))
    return len(gone)


def _absent(cur: Any, resolved: ResolvedSpec, table: Table, keys: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The keys the source table does not have (checked in slices, the key's own types)."""
    names = list(table.primary_key)
    key_sql = ", ".join(quote_pg(k) for k in names)
    name = qualified(resolved, table.name)
    gone: list[tuple[Any, ...]] = []
    for start in range(0, len(keys), _SWEEP_KEYS):
        piece = keys[start:start + _SWEEP_KEYS]
        rows = ", ".join(cur.mogrify("(" + ", ".join(["%s"] * len(names)) + ")", k).decode() for k in piece)
        cur.execute(f"SELECT {key_sql} FROM {name} WHERE ({key_sql}) IN ({rows})")
        found = {tuple(str(v) for v in row) for row in cur.fetchall()}
        gone += [k for k in piece if tuple(str(v) for v in k) not in found]
    return gone
