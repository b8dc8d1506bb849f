"""The stack environment (real Debezium + Kafka Connect + Tansu + S3/moto + DuckDB) where it used to hang or lose
data: an empty source, a committed offset beyond the log end (issue 14, item 5)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from bankflow.pipeline import Pipeline
from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import ResolvedSpec, load_spec

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path, pg_server: EmbeddedPostgres, tansu_broker: Any, kafka_connect: Any,
          s3_server: Any) -> Iterator[tuple[ResolvedSpec, Any]]:
    """The banking spec on the harness's services, application tables created and empty."""
    from tests.integration.test_stack_e2e import fresh_stack

    with fresh_stack(tmp_path, pg_server, tansu_broker, kafka_connect, s3_server, "faults") as created:
        yield created


@pytest.mark.timeout(600)
def test_an_empty_source_catches_up_at_once(stack: tuple[ResolvedSpec, Any]) -> None:
    """Debezium creates a table's topic with its first event: with no data there is no topic, and the first
    catch-up used to wait for one forever."""
    resolved, sql = stack
    pipeline = Pipeline(resolved)
    report = pipeline.apply(stages=["source", "cdc", "load"], progress=False)
    assert report.ok, report.to_dict()
    assert report.stages[1].events == 0 and report.stages[1].seconds < 120, report.to_dict()
    sql("INSERT INTO banking.customers (first_name, last_name, email, created_at, updated_at) "
        "VALUES ('Ada', 'Lovelace', 'ada@example.com', now(), now())")
    report = pipeline.apply(stages=["cdc", "load"], progress=False)
    assert report.ok, report.to_dict()
    con = duckdb.connect(str(resolved.spec.warehouse.path), read_only=True)  # type: ignore[union-attr]
    try:
        assert con.execute("SELECT first_name, _op FROM raw.customers").fetchall() == [("Ada", "c")]
    finally:
        con.close()


@pytest.mark.timeout(600)
def test_a_topic_emptied_under_the_consumer_stops_it_with_a_way_forward(stack: tuple[ResolvedSpec, Any]) -> None:
    """The committed offsets are beyond the log's end (a recreated topic, expired retention): the consumer used to
    carry on from the new end and the changes in between never arrived. Now the cdc stage stops and says so."""
    from confluent_kafka.admin import AdminClient, NewTopic

    resolved, sql = stack
    pipeline = Pipeline(resolved)
    sql("INSERT INTO banking.customers (first_name, last_name, email, created_at, updated_at) "
        "SELECT 'c' || i, 'x', 'c' || i || '@example.com', now(), now() FROM generate_series(1, 5) i")
    assert pipeline.apply(stages=["source", "cdc", "load"], progress=False).ok
    topic = resolved.spec.topic_for(resolved.spec.table("customers"))
    admin = AdminClient({"bootstrap.servers": resolved.spec.kafka.bootstrap_servers})
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result()
    import time

    deadline = time.monotonic() + 30
    while topic in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.5)
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result()
    sql("INSERT INTO banking.customers (first_name, last_name, email, created_at, updated_at) "
        "VALUES ('late', 'x', 'late@example.com', now(), now())")
    report = pipeline.apply(stages=["cdc", "load"], progress=False)
    assert not report.ok and report.stages[-1].name == "cdc", report.to_dict()
    error = str(report.stages[-1].error)
    assert f"{topic}[0]: " in error and "the topic was emptied or recreated" in error, error
    assert "take a new snapshot" in error


@pytest.mark.timeout(600)
def test_a_connector_lost_by_connect_is_registered_again_while_following(stack: tuple[ResolvedSpec, Any],
                                                                          kafka_connect: Any) -> None:
    """A standalone Connect worker that restarts forgets connectors created over REST; `apply --follow` notices
    and registers it again (it resumes from Connect's offsets), and what was committed meanwhile arrives."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from bankflow.engines.debezium.connect import ConnectClient
    from tests.integration.test_stack_e2e import ENV

    resolved, sql = stack
    path = resolved.path
    document = yaml.safe_load(path.read_text())
    document["environments"][ENV]["cdc"]["reregister_interval_s"] = 1
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    resolved = load_spec(path, env=ENV)
    assert Pipeline(resolved).apply(stages=["source", "cdc"], progress=False).ok
    client = ConnectClient(kafka_connect.rest_url)
    name = resolved.spec.cdc.connector  # type: ignore[union-attr]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "bankflow", "apply", str(path), "--env", ENV, "--follow",
                             "--stages", "cdc", "-q"], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while client.connector_config(name) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)  # the follow run is streaming
        client.delete(name)  # what a restarted standalone worker looks like from outside
        sql("INSERT INTO banking.customers (first_name, last_name, email, created_at, updated_at) "
            "VALUES ('Grace', 'Hopper', 'grace@example.com', now(), now())")
        deadline = time.monotonic() + 60
        while client.connector_config(name) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.connector_config(name) is not None, "the connector was not registered again"
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    assert proc.returncode == 0
    report = Pipeline(resolved).apply(stages=["cdc", "load"], progress=False)
    assert report.ok, report.to_dict()
    con = duckdb.connect(str(resolved.spec.warehouse.path), read_only=True)  # type: ignore[union-attr]
    try:
        assert con.execute("SELECT first_name FROM raw.customers").fetchall() == [("Grace",)]
    finally:
        con.close()
