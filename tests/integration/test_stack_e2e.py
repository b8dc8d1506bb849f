"""The `stack` environment end to end on the real harness: PostgreSQL → Debezium on Kafka Connect → Tansu →
Parquet on S3 (moto) → DuckDB raw → dbt, driven through `Pipeline` and the CLI like a user would.

The spec is the banking pipeline (tables, dbt steps, verify checks copied from pipelines/banking.yaml) with a
`stack_test` environment pointing at the session's services, a DuckDB warehouse instead of Snowflake, and
unique connector/slot/publication/topic names so it can share the services with other tests. The module drops
its connector, slot and database at the end (an idle slot holds WAL).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from bankflow.cli import main
from bankflow.engines.debezium.connect import ConnectClient
from bankflow.errors import StageError
from bankflow.pipeline import Pipeline
from bankflow.process import free_port
from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import ResolvedSpec, load_spec
from bankflow.spec.models import DuckDBWarehouse
from bankflow.stages.base import Progress, RunContext
from bankflow.status import format_status
from tests.fixtures.services import PG_PASSWORD_VAR
from tests.harness.connect import KafkaConnectWorker
from tests.harness.s3 import S3Server
from tests.harness.tansu import TansuBroker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ENV = "stack_test"
PASSWORD_VAR = PG_PASSWORD_VAR  # the Connect worker's environment holds pg_server's password under it


@dataclass
class Stack:
    spec_path: Path
    database: str
    tag: str
    pg: EmbeddedPostgres
    connect: KafkaConnectWorker
    password: str

    def resolved(self) -> ResolvedSpec:
        return load_spec(self.spec_path, env=ENV)

    def pipeline(self) -> Pipeline:
        return Pipeline(self.resolved())


def write_spec(path: Path, *, tag: str, database: str, port: int, connect_url: str, bootstrap: str,
               s3_endpoint: str, bucket: str, state_dir: Path, overrides: dict[str, Any] | None = None) -> Path:
    """The banking spec's tables, transform and checks, with a `stack_test` env on the harness's services."""
    base = yaml.safe_load((REPO / "pipelines" / "banking.yaml").read_text())
    env: dict[str, Any] = {
        "source": {"host": "127.0.0.1", "port": port, "user": "postgres", "embedded": False, "sslmode": "disable",
                   # the embedded server's password, from the environment: it must never show up in clear
                   "password": "${" + PASSWORD_VAR + "}",
                   # a throwaway database: bankflow may manage what CDC needs (never the tables: see the fixture)
                   "manage": ["publication", "replica_identity", "heartbeat", "signal", "slot"]},
        "cdc": {"engine": "debezium", "connect_url": connect_url, "connector": f"bankflow-{tag}",
                "topic_prefix": f"bank{tag}", "slot": f"bf_{tag}", "publication": f"bf_{tag}",
                "snapshot_mode": "initial"},  # heartbeats as in banking.yaml (10 s): the wait must not need them
        "kafka": {"bootstrap_servers": bootstrap, "group": f"bankflow-{tag}", "partitions": 1},
        "lake": {"url": f"s3://{bucket}/banking", "s3_endpoint": s3_endpoint, "s3_key": "test-access-key",
                 "s3_secret": "test-secret-key"},
        "warehouse": {"type": "duckdb", "path": str(state_dir / "warehouse.duckdb"), "raw_schema": "raw"},
    }
    for section, values in (overrides or {}).items():
        env.setdefault(section, {}).update(values)
    spec = {
        "version": 1,
        "name": "banking_stack_test",
        "default_env": ENV,
        "state_dir": str(state_dir),
        "source": {**base["source"], "database": database},
        "tables": base["tables"],
        "cdc": base["cdc"],
        "kafka": base["kafka"],
        "lake": {**base["lake"], "url": f"file://{state_dir}/lake-unused"},
        "warehouse": {"type": "duckdb", "path": str(state_dir / "unused.duckdb")},
        "transform": {**base["transform"], "project_dir": str(REPO / "banking_dbt")},
        "generate": {"workload": str(REPO / "pipelines" / "workloads" / "banking.py")},
        "verify": base["verify"],
        "environments": {ENV: env},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_server: EmbeddedPostgres, tansu_broker: TansuBroker,
          kafka_connect: KafkaConnectWorker, s3_server: S3Server) -> Iterator[Stack]:
    tag = uuid.uuid4().hex[:8]
    database = f"bank_{tag}"
    bucket = f"lake-{tag}"
    pg_server.create_database(database)
    s3_server.create_bucket(bucket)
    root = tmp_path_factory.mktemp("stack")
    password = pg_server.password
    assert os.environ.get(PASSWORD_VAR) == password  # set by the kafka_connect fixture, before the JVM started
    path = write_spec(root / "banking.yaml", tag=tag, database=database, port=pg_server.port,
                      connect_url=kafka_connect.rest_url, bootstrap=tansu_broker.bootstrap_servers,
                      s3_endpoint=s3_server.endpoint_url, bucket=bucket, state_dir=root / "state")
    stack = Stack(path, database, tag, pg_server, kafka_connect, password)
    create_application_tables(stack)
    try:
        yield stack
    finally:
        spec = stack.resolved().spec
        ConnectClient(kafka_connect.rest_url).delete(spec.cdc.connector)
        drop_slot(pg_server, database, spec.cdc.slot)
        pg_server.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def create_application_tables(stack: Stack) -> None:
    """The application team's tables: bankflow does not create tables on a source it does not run."""
    from bankflow.source.ddl import parents_first, table_ddl

    resolved = stack.resolved()
    statements = [f'CREATE SCHEMA IF NOT EXISTS "{resolved.spec.source.schema_name}"']
    for table in parents_first(resolved.spec.tables):
        statements += table_ddl(resolved, table)
    stack.pg.execute(";\n".join(statements), dbname=stack.database)


@contextlib.contextmanager
def fresh_stack(directory: Path, pg: EmbeddedPostgres, broker: TansuBroker, connect: KafkaConnectWorker,
                s3: Any, prefix: str) -> Iterator[tuple[ResolvedSpec, Callable[[str], list[tuple[Any, ...]]]]]:
    """The banking spec on the harness's services in a database and bucket of its own, the application tables
    created and empty; yields (resolved spec, run SQL in that database). Connector, slot and database are
    removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    database, bucket = f"{prefix}_{tag}", f"{prefix}-{tag}"
    pg.create_database(database)
    s3.create_bucket(bucket)
    path = write_spec(directory / "banking.yaml", tag=tag, database=database, port=pg.port,
                      connect_url=connect.rest_url, bootstrap=broker.bootstrap_servers,
                      s3_endpoint=s3.endpoint_url, bucket=bucket, state_dir=directory / "state")
    create_application_tables(Stack(path, database, tag, pg, connect, pg.password))
    resolved = load_spec(path, env=ENV)
    try:
        yield resolved, lambda sql: pg.execute(sql, dbname=database)
    finally:
        ConnectClient(connect.rest_url).delete(resolved.spec.cdc.connector)
        drop_slot(pg, database, resolved.spec.cdc.slot)
        pg.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def drop_slot(pg: EmbeddedPostgres, database: str, slot: str, timeout: float = 30.0) -> None:
    """Drop the slot once the deleted connector's task has let go of it (an active slot cannot be dropped)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = pg.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        if not rows:
            return
        if rows[0][0] is not None and time.monotonic() < deadline:
            time.sleep(0.2)
            continue
        if rows[0][0] is not None:  # still held: end the walsender (the connector is gone)
            pg.execute("SELECT pg_terminate_backend(%s)", (rows[0][0],))
            time.sleep(0.5)
        pg.execute("SELECT pg_drop_replication_slot(%s)", (slot,), dbname=database)
        return


# ---------------------------------------------------------------- helpers


def _norm(value: Any) -> Any:
    """PostgreSQL and DuckDB values to one comparable form (aware datetimes as UTC instants)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc) if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, Decimal):
        return value.normalize()
    if isinstance(value, str):
        return value.rstrip()  # char(3)
    return value


def source_rows(stack: Stack, resolved: ResolvedSpec) -> dict[str, dict[int, tuple[Any, ...]]]:
    schema = resolved.spec.source.schema_name
    out: dict[str, dict[int, tuple[Any, ...]]] = {}
    conn = stack.pg.connect(stack.database, options="-c TimeZone=UTC")
    try:
        with conn.cursor() as cur:
            for table in resolved.spec.tables:
                names = [c.name for c in table.columns]
                cur.execute(f'SELECT {", ".join(names)} FROM "{schema}"."{table.name}"')
                out[table.name] = {r[0]: tuple(_norm(v) for v in r) for r in cur.fetchall()}
    finally:
        conn.close()
    return out


def raw_state(resolved: ResolvedSpec) -> dict[str, dict[str, Any]]:
    """Per raw table: the latest row per key by _lsn, deleted keys with their before-images, duplicates."""
    import duckdb

    spec = resolved.spec
    con = duckdb.connect(warehouse_path(resolved))
    out: dict[str, dict[str, Any]] = {}
    try:
        for table in spec.tables:
            raw = f"{spec.warehouse.raw_schema}.{table.raw_name}"
            names = [c.name for c in table.columns]
            latest = con.execute(
                f"SELECT _op, {', '.join(names)} FROM {raw} "
                "QUALIFY row_number() OVER (PARTITION BY id ORDER BY _lsn DESC) = 1").fetchall()
            duplicates = con.execute(
                f"SELECT count(*) FROM (SELECT id, _lsn FROM {raw} GROUP BY ALL HAVING count(*) > 1)").fetchone()
            ops = dict(con.execute(f"SELECT _op, count(*) FROM {raw} GROUP BY _op").fetchall())
            out[table.name] = {
                "live": {r[1]: tuple(_norm(v) for v in r[1:]) for r in latest if r[0] != "d"},
                "deleted": {r[1]: tuple(_norm(v) for v in r[1:]) for r in latest if r[0] == "d"},
                "duplicates": duplicates[0] if duplicates else 0,
                "ops": ops,
            }
    finally:
        con.close()
    return out


def assert_raw_matches_source(stack: Stack, resolved: ResolvedSpec) -> dict[str, dict[str, Any]]:
    source = source_rows(stack, resolved)
    raw = raw_state(resolved)
    columns = {t.name: t.columns for t in resolved.spec.tables}
    for table, rows in source.items():
        state = raw[table]
        assert state["duplicates"] == 0, f"raw.{table} has duplicate (id, _lsn)"
        missing = sorted(set(rows) - set(state["live"]))
        assert not missing, f"raw.{table}: {len(missing)} source keys missing or deleted, e.g. {missing[:5]}"
        extra = sorted(set(state["live"]) - set(rows))
        assert not extra, f"raw.{table}: {len(extra)} keys live in raw but gone from the source: {extra[:5]}"
        wrong = [k for k, v in rows.items() if state["live"][k] != v]
        assert not wrong, (f"raw.{table}: latest values differ for {len(wrong)} keys, e.g. {wrong[0]}: "
                           f"source {rows[wrong[0]]} raw {state['live'][wrong[0]]}")
        resurrected = set(state["deleted"]) & set(rows)
        assert not resurrected, f"raw.{table}: keys deleted in raw but present in the source: {resurrected}"
        for key, image in state["deleted"].items():  # a delete carries its before-image (REPLICA IDENTITY FULL)
            assert all(v is not None for v, c in zip(image, columns[table], strict=True)
                       if not c.nullable), f"raw.{table}: delete of {key} lacks its before-image: {image}"
    return raw


def warehouse_path(resolved: ResolvedSpec) -> str:
    warehouse = resolved.spec.warehouse
    assert isinstance(warehouse, DuckDBWarehouse)
    return str(resolved.resolve_path(warehouse.path))


def stage(report: Any, name: str) -> Any:
    found = [s for s in report.stages if s.name == name]
    assert found, f"stage {name} did not run: {report.to_dict()}"
    return found[0]


def apply(pipeline: Pipeline, stages: list[str]) -> Any:
    report = pipeline.apply(stages=stages, progress=False)
    assert report.ok, report.to_dict()
    return report


# ---------------------------------------------------------------- tests


def test_stack_end_to_end_changes_reach_raw_exactly(stack: Stack) -> None:
    resolved = stack.resolved()
    pipeline = Pipeline(resolved)
    apply(pipeline, ["source"])
    first = pipeline.generate(seed=11, progress=False)
    assert sum(first["inserted"].values()) > 0

    # Connector registered via REST, the snapshot consumed from Kafka into S3, loaded and modelled.
    report = apply(pipeline, ["cdc", "load", "transform"])
    cdc = stage(report, "cdc")
    assert cdc.details["connector"]["created"] is True
    assert cdc.details["connector"]["state"] == "RUNNING"
    assert cdc.files >= 3 and stage(report, "load").files == cdc.files
    snapshot = assert_raw_matches_source(stack, resolved)
    assert all(set(s["ops"]) <= {"r", "c", "u"} for s in snapshot.values())

    # Updates, deletes and new rows, streamed this time; right after the commits, no waiting in the test.
    second = pipeline.generate(seed=12, progress=False)
    assert second["deleted"].get("customers", 0) > 0 and second["updated"].get("accounts", 0) > 0, second
    report = apply(pipeline, ["cdc", "load", "transform"])
    assert stage(report, "cdc").details["connector"]["created"] is False
    assert stage(report, "load").files >= 1
    raw = assert_raw_matches_source(stack, resolved)
    assert raw["customers"]["deleted"], "the workload deletes prospects: raw.customers must hold 'd' rows"
    assert raw["accounts"]["ops"].get("u", 0) > 0, "balances move: raw.accounts must hold 'u' rows"
    assert raw["transactions"]["ops"].get("c", 0) > 0

    result = pipeline.verify()
    assert result.ok, result.to_dict()

    # Nothing new in the source: a re-apply writes and loads nothing.
    again = apply(pipeline, ["cdc", "load"])
    assert stage(again, "cdc").files == 0
    assert stage(again, "load").files == 0
    raw = assert_raw_matches_source(stack, resolved)

    # status: the connector runs, the group has committed every event of every topic, nothing is lagging
    status = pipeline.status()
    assert status["connector"]["state"] == "RUNNING"
    assert [t["state"] for t in status["connector"]["tasks"]] == ["RUNNING"]
    topics = status["consumer"]["topics"]
    assert set(topics) == set(resolved.spec.tables_by_topic)
    for topic, info in topics.items():
        table = resolved.spec.tables_by_topic[topic].name
        assert info["lag"] == 0 and info["committed"] >= sum(raw[table]["ops"].values()), (topic, info)
    text = format_status(status)
    assert "RUNNING" in text and "lag 0" in text


def test_plan_shows_live_connector_diff_without_secrets(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = str(stack.spec_path)
    apply(stack.pipeline(), ["source", "cdc"])  # idempotent: the connector exists when this returns
    capsys.readouterr()
    main(["plan", spec_path, "--env", ENV])
    out = capsys.readouterr().out
    assert "matches the rendered config" in out, out

    changed = stack.spec_path.with_name("banking-changed.yaml")
    resolved = stack.resolved()
    port = resolved.spec.source.port
    write_spec(changed, tag=stack.tag, database=stack.database, port=port,
               connect_url=stack.connect.rest_url, bootstrap=resolved.spec.kafka.bootstrap_servers,
               s3_endpoint=resolved.spec.lake.s3_endpoint or "", bucket=resolved.spec.lake.url.split("/")[2],
               state_dir=resolved.state_dir, overrides={"cdc": {"max_batch_size": 1234}})
    code = main(["plan", str(changed), "--env", ENV])
    out = capsys.readouterr().out
    assert code == 3, out
    assert "differs from the rendered config" in out, out
    assert '-  "max.batch.size": "8192"' in out and '+  "max.batch.size": "1234"' in out, out
    assert "${env:" + PASSWORD_VAR + "}" in out or "database.password" not in out
    assert stack.password not in out
    live = ConnectClient(stack.connect.rest_url).connector_config(resolved.spec.cdc.connector)
    assert live is not None and stack.password not in str(live), "Connect must hold a reference, not the value"


def test_connector_rejected_by_connect_names_the_fields(stack: Stack, tmp_path: Path) -> None:
    from bankflow.engines.debezium.catchup import register_connector

    resolved = stack.resolved()
    dead_port = free_port()  # nothing listens there
    path = write_spec(tmp_path / "broken.yaml", tag=uuid.uuid4().hex[:8], database=stack.database, port=dead_port,
                      connect_url=stack.connect.rest_url, bootstrap=resolved.spec.kafka.bootstrap_servers,
                      s3_endpoint=resolved.spec.lake.s3_endpoint or "", bucket=resolved.spec.lake.url.split("/")[2],
                      state_dir=tmp_path / "state")
    broken = load_spec(path, env=ENV)
    with pytest.raises(StageError) as excinfo:
        register_connector(RunContext(broken, Progress(False)))
    message = str(excinfo.value)
    assert f"Kafka Connect rejected connector {broken.spec.cdc.connector!r}" in message
    assert "database.hostname" in message, message
    assert str(dead_port) in message or "refused" in message.lower() or "connect" in message.lower(), message
    assert stack.password not in message
    # Nothing was created.
    assert ConnectClient(stack.connect.rest_url).connector_config(broken.spec.cdc.connector) is None
    # Through apply, the same message is the stage's error.
    report = Pipeline(broken).apply(stages=["cdc"], progress=False)
    assert not report.ok and "database.hostname" in (report.stages[-1].error or "")
