"""The embedded real-service harness: each service really does what the pipeline relies on."""

from __future__ import annotations

import json
import os
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bankflow.source.embedded import EmbeddedPostgres
from tests.fixtures.services import PG_PASSWORD_VAR
from tests.harness.connect import POSTGRES_CONNECTOR_CLASS, KafkaConnectWorker
from tests.harness.s3 import S3Server
from tests.harness.tansu import TansuBroker

pytestmark = pytest.mark.integration


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _drop_slot(pg: EmbeddedPostgres, slot: str, dbname: str = "postgres", timeout: float = 30.0) -> None:
    """Drop a replication slot once its consumer has let go (idle slots pin WAL forever)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = pg.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,), dbname)
        if not rows:
            return
        if not rows[0][0]:
            pg.execute("SELECT pg_drop_replication_slot(%s)", (slot,), dbname)
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"replication slot {slot} still active after {timeout}s")
        time.sleep(0.2)


# --- PostgreSQL -------------------------------------------------------------------------------------------

def test_postgres_runs_with_logical_wal(pg_server: EmbeddedPostgres) -> None:
    assert pg_server.is_running()
    assert pg_server.host == "127.0.0.1"
    assert pg_server.execute("SHOW wal_level") == [("logical",)]
    assert pg_server.execute("SHOW TimeZone") == [("UTC",)]
    assert int(pg_server.execute("SHOW max_replication_slots")[0][0]) >= 16
    assert pg_server.execute("SHOW listen_addresses") == [("127.0.0.1",)]
    assert pg_server.dsn("x") == f"postgresql://postgres:{pg_server.password}@127.0.0.1:{pg_server.port}/x"
    assert pg_server.execute("SHOW password_encryption") == [("scram-sha-256",)]
    assert pg_server.server_log.is_file()


def _parse_insert(payload: bytes) -> list[str | None]:
    """Column values of a pgoutput (proto 1) Insert message: 'I', relid, 'N', tuple data."""
    assert payload[:1] == b"I"
    assert payload[5:6] == b"N"
    (ncols,) = struct.unpack_from(">h", payload, 6)
    pos, values = 8, []
    for _ in range(ncols):
        kind = payload[pos:pos + 1]
        pos += 1
        if kind == b"t":
            (length,) = struct.unpack_from(">i", payload, pos)
            values.append(payload[pos + 4:pos + 4 + length].decode())
            pos += 4 + length
        else:  # n (null) or u (unchanged toast)
            values.append(None)
    return values


def test_postgres_pgoutput_slot_receives_insert(pg_server: EmbeddedPostgres) -> None:
    import psycopg2
    import psycopg2.extras

    db = _unique("repl")
    pg_server.create_database(db)
    pg_server.create_database(db)  # idempotent
    pg_server.execute("CREATE TABLE t (id int PRIMARY KEY, amount numeric(18,2), note text)", dbname=db)
    pg_server.execute("CREATE PUBLICATION pub FOR TABLE t", dbname=db)
    slot = _unique("slot")
    conn = psycopg2.connect(**pg_server.connect_kwargs(db),
                            connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        cur = conn.cursor()
        cur.create_replication_slot(slot, output_plugin="pgoutput")
        pg_server.execute("INSERT INTO t VALUES (1, 1234.56, 'héllo')", dbname=db)
        cur.start_replication(slot_name=slot, decode=False,
                              options={"proto_version": "1", "publication_names": "pub"})
        seen: list[bytes] = []
        deadline = time.monotonic() + 15
        inserted = None
        while inserted is None and time.monotonic() < deadline:
            msg = cur.read_message()
            if msg is None:
                time.sleep(0.01)
                continue
            seen.append(msg.payload[:1])
            if msg.payload[:1] == b"I":
                inserted = _parse_insert(msg.payload)
            cur.send_feedback(flush_lsn=msg.data_start, force=True)
        assert inserted == ["1", "1234.56", "héllo"], seen
        assert seen[:2] == [b"B", b"R"]
    finally:
        conn.close()
        _drop_slot(pg_server, slot, db)
    left = pg_server.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    assert left == [(0,)]


def test_postgres_start_twice_reuses_server(pg_server: EmbeddedPostgres) -> None:
    pid, port = pg_server.server_pid(), pg_server.port
    assert pg_server.start() is pg_server
    assert (pg_server.server_pid(), pg_server.port) == (pid, port)
    other = EmbeddedPostgres(pg_server.data_dir).start()  # a second handle (another process, the CLI)
    assert (other.server_pid(), other.port) == (pid, port)
    assert other.execute("SELECT 1") == [(1,)]


def test_postgres_stop_start_keeps_data_and_port(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg")
    try:
        pg.start()
        port = pg.port
        pg.execute("CREATE TABLE kept (id int PRIMARY KEY, balance numeric(18,2))")
        pg.execute("INSERT INTO kept VALUES (1, 10.01), (2, 20.02)")
        pg.stop()
        assert not pg.is_running()
        pg.stop()  # idempotent
        again = EmbeddedPostgres(tmp_path / "pg").start()  # a fresh handle finds the cluster and its port
        assert again.port == port
        assert again.execute("SELECT id, balance::text FROM kept ORDER BY id") == [(1, "10.01"), (2, "20.02")]
    finally:
        pg.destroy()
    assert not pg.cluster_dir.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_postgres_as_root_relocates_cluster_nobody_cannot_reach(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    pg = EmbeddedPostgres(private / "pg")
    try:
        pg.start()
        assert pg.relocated
        assert not pg.cluster_dir.is_relative_to(private)
        assert pg.cluster_dir.stat().st_uid == 65534  # PostgreSQL runs as nobody, never as root
        assert (private / "pg" / "bankflow-postgres.json").is_file()  # the pointer stop/reuse follow
        assert EmbeddedPostgres(private / "pg").is_running()
        assert pg.execute("SELECT current_setting('data_directory')") == [(str(pg.cluster_dir),)]
    finally:
        pg.destroy()
    assert not pg.cluster_dir.exists()


def test_postgres_start_failure_explains(tmp_path: Path, pg_server: EmbeddedPostgres) -> None:
    from bankflow.errors import ServiceError

    clash = EmbeddedPostgres(tmp_path / "clash", port=pg_server.port)  # port taken by pg_server
    try:
        with pytest.raises(ServiceError, match=r"did not start[\s\S]*server\.log"):
            clash.start(timeout=20)
    finally:
        clash.destroy()


# --- Kafka protocol (Tansu) ---------------------------------------------------------------------------------

def _consumer(broker: TansuBroker, group: str) -> Any:
    from confluent_kafka import Consumer

    return Consumer({
        "bootstrap.servers": broker.bootstrap_servers,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "fetch.wait.max.ms": 10,
    })


def _drain(consumer: Any, want: int, timeout: float = 60.0, idle: float = 1.0) -> list[Any]:
    """Read until `want` messages arrived, then keep polling `idle` seconds to catch any extra."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    quiet_until: float | None = None
    while time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            got.append(msg)
            continue
        if msg is not None:
            raise AssertionError(msg.error())
        if len(got) >= want:
            quiet_until = quiet_until or time.monotonic() + idle
            if time.monotonic() >= quiet_until:
                break
    return got


def test_tansu_produce_consume_exactly_once_with_group_commit(tansu_broker: TansuBroker) -> None:
    from confluent_kafka import Producer

    topic, group, n = _unique("bf_topic"), _unique("bf_group"), 500
    tansu_broker.create_topic(topic, partitions=3)
    tansu_broker.create_topic(topic, partitions=3)  # idempotent
    assert topic in tansu_broker.list_topics()
    producer = Producer({"bootstrap.servers": tansu_broker.bootstrap_servers, "linger.ms": 5})
    for i in range(n):
        producer.produce(topic, key=str(i % 17).encode(), value=json.dumps({"i": i}).encode())
    assert producer.flush(30) == 0

    consumer = _consumer(tansu_broker, group)
    consumer.subscribe([topic])
    try:
        got = _drain(consumer, n)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    values = sorted(json.loads(m.value())["i"] for m in got)
    assert values == list(range(n))
    assert {m.partition() for m in got} == {0, 1, 2}

    for i in range(n, n + 10):
        producer.produce(topic, key=b"k", value=json.dumps({"i": i}).encode())
    assert producer.flush(30) == 0
    resumed = _consumer(tansu_broker, group)  # same group: starts after the committed offsets
    resumed.subscribe([topic])
    try:
        more = _drain(resumed, 10)
    finally:
        resumed.close()
    assert sorted(json.loads(m.value())["i"] for m in more) == list(range(n, n + 10))


# --- Kafka Connect + Debezium -------------------------------------------------------------------------------

def test_connect_rest_lists_debezium_postgres(kafka_connect: KafkaConnectWorker) -> None:
    client = kafka_connect.client
    assert client.ready()
    assert client.server_info()["version"].startswith("4.")
    plugins = {p["class"] for p in client.plugins()}
    assert POSTGRES_CONNECTOR_CLASS in plugins
    assert client.status("bf_no_such_connector") is None
    assert client.delete("bf_no_such_connector") is False


def test_debezium_snapshot_and_update_reach_kafka(pg_server: EmbeddedPostgres, tansu_broker: TansuBroker,
                                                   kafka_connect: KafkaConnectWorker) -> None:
    db, name = _unique("dbz"), _unique("bf_pg")
    prefix, slot, publication = name, f"{name}_slot", f"{name}_pub"
    pg_server.create_database(db)
    pg_server.execute("""
        CREATE TABLE accounts (
            id bigint PRIMARY KEY,
            owner text NOT NULL,
            balance numeric(18,2) NOT NULL,
            opened_at timestamptz NOT NULL
        )""", dbname=db)
    pg_server.execute("ALTER TABLE accounts REPLICA IDENTITY FULL", dbname=db)
    pg_server.execute("INSERT INTO accounts VALUES (1, 'ada', 1234.56, '2024-01-02 03:04:05.123456+00')",
                      dbname=db)
    config = {
        "connector.class": POSTGRES_CONNECTOR_CLASS,
        "tasks.max": "1",
        "database.hostname": pg_server.host,
        "database.port": str(pg_server.port),
        "database.user": "postgres",
        "database.password": "${env:" + PG_PASSWORD_VAR + "}",  # the worker's environment holds it
        "database.dbname": db,
        "topic.prefix": prefix,
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "publication.name": publication,
        "publication.autocreate.mode": "filtered",
        "table.include.list": "public.accounts",
        "snapshot.mode": "initial",
        "decimal.handling.mode": "string",
        "time.precision.mode": "adaptive_time_microseconds",
        "tombstones.on.delete": "false",
        "poll.interval.ms": "10",
        "max.batch.size": "8192",
        "max.queue.size": "32768",  # must exceed max.batch.size (default 8192 is rejected)
        "producer.override.batch.size": "1048576",
        "producer.override.linger.ms": "20",
    }
    topic = f"{prefix}.public.accounts"
    consumer = _consumer(tansu_broker, _unique("dbz_group"))
    client = kafka_connect.client
    try:
        assert client.validate(POSTGRES_CONNECTOR_CLASS, {"name": name, **config}) == {}
        assert client.put_config(name, config) is True  # created
        client.wait_running(name, timeout=60)
        assert name in client.connectors()
        _await_topic(tansu_broker, topic)
        consumer.subscribe([topic])
        snapshot = _await_event(consumer, topic, lambda e: e["op"] == "r")
        assert snapshot["after"] == {"id": 1, "owner": "ada", "balance": "1234.56",
                                     "opened_at": "2024-01-02T03:04:05.123456Z"}
        assert snapshot["source"]["db"] == db

        pg_server.execute("UPDATE accounts SET balance = balance - 0.57 WHERE id = 1", dbname=db)
        update = _await_event(consumer, topic, lambda e: e["op"] == "u")
        assert update["before"]["balance"] == "1234.56"  # REPLICA IDENTITY FULL: the old row travels too
        assert update["after"]["balance"] == "1233.99"
        assert update["source"]["lsn"] > snapshot["source"]["lsn"]
        assert isinstance(update["source"]["txId"], int)
    finally:
        consumer.close()
        try:
            client.delete(name)
        finally:
            _drop_slot(pg_server, slot, db, timeout=60)
            pg_server.execute(f'DROP PUBLICATION IF EXISTS "{publication}"', dbname=db)


def _await_topic(broker: TansuBroker, topic: str, timeout: float = 60.0) -> None:
    """Subscribing before the topic exists would leave the consumer waiting for a metadata refresh."""
    deadline = time.monotonic() + timeout
    while topic not in broker.list_topics():
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {topic} not created within {timeout}s: {broker.list_topics()}")
        time.sleep(0.2)


def _await_event(consumer: Any, topic: str, match: Any, timeout: float = 60.0) -> dict[str, Any]:
    """The first Debezium envelope on `topic` (JSON without schemas) for which match(event) holds."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None or msg.error() is not None or msg.value() is None:
            continue
        event = json.loads(msg.value())
        seen.append(event.get("op"))
        if match(event):
            return dict(event)
    raise AssertionError(f"no matching event on {topic} within {timeout}s; saw ops {seen}")


# --- S3 -----------------------------------------------------------------------------------------------------

def test_s3_write_and_read_through_s3fs(s3_server: S3Server) -> None:
    bucket = _unique("bf-lake").replace("_", "-")
    s3_server.create_bucket(bucket)
    s3_server.create_bucket(bucket)  # idempotent
    fs = s3_server.filesystem()
    key = f"{bucket}/raw/accounts/part-000.json"
    with fs.open(key, "wb") as handle:
        handle.write(b'{"id": 1, "balance": "1234.56"}')
    assert fs.cat(key) == b'{"id": 1, "balance": "1234.56"}'
    assert fs.ls(f"{bucket}/raw/accounts") == [key]
    assert fs.info(key)["size"] == 31


def test_s3_server_as_a_child_process_serves_and_stops(tmp_path: Path) -> None:
    """Benchmarks run moto in its own process so the consumer's CPU figure excludes the server's."""
    import os
    import socket

    with S3Server(child_process=True, log_dir=tmp_path) as server:
        assert server._proc is not None and server._proc.pid != os.getpid()
        server.create_bucket("bf-child")
        fs = server.filesystem()
        fs.pipe("bf-child/k.parquet", b"PAR1")
        assert fs.cat("bf-child/k.parquet") == b"PAR1"
        port = server.port
        assert port is not None
    assert not server.is_running()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more


def test_down_destroy_deletes_the_embedded_source_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """`down --destroy`: the embedded cluster (relocated under /var/tmp when run as root) is gone afterwards."""
    from bankflow.cli import main

    spec = tmp_path / "p.yaml"
    spec.write_text(
        "version: 1\nname: destroyme\nstate_dir: state\n"
        "source: {type: postgres, database: shop, schema: shop, embedded: true, port: 0, sslmode: disable}\n"
        "tables:\n  - name: items\n    primary_key: [id]\n    columns:\n"
        "      - {name: id, type: bigint, nullable: false}\n"
        "lake: {url: file://lake}\nwarehouse: {type: duckdb, path: wh.duckdb}\n", encoding="utf-8")
    assert main(["apply", str(spec), "--stages", "source", "-q"]) == 0
    server = EmbeddedPostgres(tmp_path / "state" / "postgres")
    cluster = server.cluster_dir
    assert cluster.exists() and server.is_running()
    assert main(["down", str(spec), "--destroy", "-q"]) == 0
    assert not cluster.exists() and not server.is_running()
    assert main(["apply", str(spec), "--stages", "source", "-q"]) == 0  # a fresh apply starts over
    assert main(["down", str(spec), "--destroy", "-q"]) == 0
