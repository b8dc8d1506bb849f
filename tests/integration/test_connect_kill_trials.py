"""Kafka Connect killed with -9 under a running pipeline, ten times at random moments while a workload writes
(issue 14, item 5). Debezium then resumes from the offsets Connect last flushed and produces again what it had
already produced, so Kafka holds some changes twice; `apply --follow` re-registers the connector the restarted
standalone worker forgot, and raw must still hold each change once and equal the source.

A private Connect worker (not the session's): killing the shared one would take other tests' connectors with it.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from bankflow.engines.debezium.connect import ConnectClient
from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import load_spec
from tests.harness.connect import KafkaConnectWorker
from tests.harness.tansu import TansuBroker
from tests.integration.test_backfill_builtin import APP_DDL, Workload, apply_ok
from tests.integration.test_backfill_debezium import Source, exact

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 10


@pytest.fixture
def private_connect(tansu_broker: TansuBroker, kafka_connect: KafkaConnectWorker,
                    tmp_path: Path) -> Iterator[KafkaConnectWorker]:
    """A Connect worker of this test's own (the session fixture set the password variable it inherits)."""
    worker = KafkaConnectWorker(tansu_broker.bootstrap_servers, tmp_path / "connect")
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def source(pg_server: EmbeddedPostgres, tansu_broker: TansuBroker, private_connect: KafkaConnectWorker,
           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Source]:
    from tests.integration.test_stack_e2e import drop_slot

    tag = uuid.uuid4().hex[:8]
    database = f"ck_{tag}"
    pg_server.create_database(database)
    pg_server.execute(APP_DDL.format(rows=300), dbname=database)
    monkeypatch.chdir(tmp_path)
    try:
        yield Source(pg_server, database, tag, tmp_path, private_connect.rest_url, tansu_broker.bootstrap_servers)
    finally:
        with contextlib.suppress(Exception):
            ConnectClient(private_connect.rest_url).delete(f"bfd-{tag}")
        drop_slot(pg_server, database, f"bfd_{tag}")
        pg_server.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def kafka_copies(source: Source, topics: list[str]) -> int:
    """Changes Kafka holds more than once (same key, LSN and op): what the restarts made Debezium send again."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": source.bootstrap, "group.id": f"copies-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False})
    seen: Counter[tuple[Any, ...]] = Counter()
    try:
        for topic in topics:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
            consumer.assign([TopicPartition(topic, 0, 0)])
            position, idle = 0, 0
            while (position < high or idle < 3) and idle < 25:
                message = consumer.poll(0.2)
                if message is None or message.error() is not None:
                    idle += 1
                    continue
                idle = 0
                position = (message.offset() or 0) + 1
                event = orjson.loads(message.value()) if message.value() else None
                if isinstance(event, dict) and event.get("op") in ("c", "u", "d"):
                    seen[(topic, message.key(), event["source"]["lsn"], event["op"])] += 1
    finally:
        consumer.close()
    return sum(n - 1 for n in seen.values() if n > 1)


@pytest.mark.timeout(1200)
def test_connect_kill_9_and_restart_trials(source: Source, private_connect: KafkaConnectWorker) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    resolved = source.spec("orders", "parts")
    path = source.root / "pipeline.yaml"
    document = yaml.safe_load(path.read_text())
    document["cdc"]["reregister_interval_s"] = 1
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    resolved = load_spec(path)
    apply_ok(resolved)  # connector, snapshot, raw
    client = ConnectClient(private_connect.rest_url)
    name = resolved.spec.cdc.connector
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    follow = subprocess.Popen([sys.executable, "-m", "bankflow", "apply", str(path), "--follow", "--stages", "cdc",
                               "-q"], cwd=source.root, env=env, start_new_session=True)
    try:
        with Workload(source, ["orders", "parts"], seed=seed % 997):  # type: ignore[arg-type]
            for trial in range(TRIALS):
                time.sleep(rng.uniform(1.0, 4.0))
                assert follow.poll() is None, f"trial {trial} (seed {seed}): the follow run ended"
                proc = private_connect._proc
                assert proc is not None
                proc.send_signal(signal.SIGKILL)  # the JVM, mid-stream: no offset flush, no clean stop
                proc.wait()
                private_connect._proc = None
                time.sleep(rng.uniform(0.0, 1.5))
                private_connect.start()
                deadline = time.monotonic() + 90  # the follow run registers the connector again
                while time.monotonic() < deadline:
                    status = client.status(name) or {}
                    tasks = status.get("tasks") or []
                    if tasks and all(t.get("state") == "RUNNING" for t in tasks):
                        break
                    time.sleep(0.3)
                else:
                    pytest.fail(f"trial {trial} (seed {seed}): the connector did not run again")
            time.sleep(2.0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(follow.pid, signal.SIGINT)
        follow.wait(timeout=120)
    assert follow.returncode == 0
    report = apply_ok(resolved)  # catch up and load
    topics = [resolved.spec.topic_for(resolved.spec.table(t)) for t in ("orders", "parts")]
    copies = kafka_copies(source, topics)
    print(f"changes Kafka holds twice after {TRIALS} kills: {copies}")
    assert copies > 0, f"seed {seed}: no kill made Debezium send anything again; the test proved nothing"
    exact(source, resolved, ["orders", "parts"])  # raw: each change once, equal to the source
    assert report is not None
