"""Backfills on the Debezium engine while the stream goes on (issue 14, item 1): Debezium's incremental
snapshots, started through the signal table and followed on the notification topic.

The same tables, workload and checks as the built-in engine's test (`test_backfill_builtin`), on the real
harness: pg_server as an external Postgres, Kafka Connect with Debezium, Tansu, a file lake and DuckDB. Each test
keeps a workload writing to every table while `apply` backfills, then ends with `verify`, an independent
comparison of the source with raw's latest state, and a check that raw holds no (key, _lsn) twice.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

from bankflow.cli import main
from bankflow.engines.debezium.connect import ConnectClient
from bankflow.pipeline import Pipeline
from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import ResolvedSpec, load_spec
from tests.fixtures.services import PG_PASSWORD_VAR
from tests.integration.test_backfill_builtin import APP_DDL, ROWS, TABLE, Workload, apply_ok, cdc_details, coverage
from tests.integration.test_backfill_builtin import exact as exact_builtin

pytestmark = pytest.mark.integration

SPEC = """\
version: 1
name: backfills_dbz
state_dir: {state_dir}
source:
  type: postgres
  embedded: false
  host: {host}
  port: {port}
  user: {user}
  password: ${{{variable}}}
  database: {database}
  schema: app
  sslmode: disable
  manage: [publication, replica_identity, heartbeat, signal, slot]
tables:
{tables}cdc:
  engine: debezium
  connect_url: {connect_url}
  connector: bfd-{tag}
  topic_prefix: bfd{tag}
  slot: bfd_{tag}
  publication: bfd_{tag}
  snapshot_mode: {mode}
  backfill_chunk_rows: 200
kafka:
  bootstrap_servers: {bootstrap}
  group: bfd-{tag}
  partitions: 1
lake:
  url: file://lake
  layout: "{{table}}/date={{date}}"
  flush: {{max_rows: 500, max_seconds: 0.3}}
warehouse:
  type: duckdb
  path: wh.duckdb
"""


@dataclass
class Source:
    pg: EmbeddedPostgres
    database: str
    tag: str
    root: Path
    connect_url: str
    bootstrap: str

    def spec(self, *tables: str, mode: str = "initial") -> ResolvedSpec:
        kwargs = self.pg.connect_kwargs(self.database)
        path = self.root / "pipeline.yaml"
        path.write_text(SPEC.format(state_dir=self.root / "state", host=kwargs["host"], port=kwargs["port"],
                                    user=kwargs["user"], variable=PG_PASSWORD_VAR, database=self.database,
                                    tables="".join(TABLE.format(name=t) for t in tables), tag=self.tag,
                                    mode=mode, connect_url=self.connect_url, bootstrap=self.bootstrap),
                        encoding="utf-8")
        return load_spec(path)

    def sql(self, text: str) -> list[tuple[Any, ...]]:
        return self.pg.execute(text, dbname=self.database)

    def raw(self, sql: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(self.root / "wh.duckdb"), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()


@pytest.fixture
def source(pg_server: EmbeddedPostgres, tansu_broker: Any, kafka_connect: Any, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Source]:
    from tests.integration.test_stack_e2e import drop_slot

    tag = uuid.uuid4().hex[:8]
    database = f"bfd_{tag}"
    pg_server.create_database(database)
    pg_server.execute(APP_DDL.format(rows=ROWS), dbname=database)
    monkeypatch.chdir(tmp_path)
    try:
        yield Source(pg_server, database, tag, tmp_path, kafka_connect.rest_url, tansu_broker.bootstrap_servers)
    finally:
        ConnectClient(kafka_connect.rest_url).delete(f"bfd-{tag}")
        drop_slot(pg_server, database, f"bfd_{tag}")
        pg_server.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def exact(source: Source, resolved: ResolvedSpec, tables: list[str]) -> None:
    exact_builtin(source, resolved, tables)  # type: ignore[arg-type]  # the same duck-typed source


def backfilled_rows(source: Source, table: str) -> int:
    """Rows of raw.table that Debezium's incremental snapshot read (op r after the initial snapshot)."""
    return source.raw(f"SELECT count(*) FROM raw.{table} WHERE _op = 'r' AND _tx_id IS NULL")[0][0]


@pytest.mark.timeout(900)
def test_a_table_added_to_the_spec_is_backfilled_while_the_stream_goes_on(source: Source) -> None:
    first = source.spec("orders")
    apply_ok(first)
    assert coverage(first, "orders")["how"] == "initial snapshot"
    assert coverage(first, "parts") is None

    both = source.spec("orders", "parts")
    with Workload(source, ["orders", "parts"]) as work:  # type: ignore[arg-type]
        time.sleep(0.3)
        report = apply_ok(both)
        during = work.count
    details = cdc_details(report)
    assert details["backfills"] == ["parts"]
    assert details["backfill_rows"] >= ROWS * 0.8  # the workload deletes some while it runs
    assert during > 50, "the workload wrote during the backfill"
    marker = coverage(both, "parts")
    assert marker["state"] == "covered" and marker["how"] == "backfill"
    apply_ok(both)  # the changes after the first catch-up
    exact(source, both, ["orders", "parts"])
    assert backfilled_rows(source, "parts") >= ROWS * 0.8
    assert "backfills" not in cdc_details(apply_ok(both))  # a later run backfills nothing


@pytest.mark.timeout(900)
def test_a_table_removed_and_added_back_is_backfilled_again(source: Source) -> None:
    both = source.spec("orders", "parts")
    apply_ok(both)
    only = source.spec("orders")
    apply_ok(only)
    assert coverage(only, "parts") is None  # its marker went with it
    # changes to parts while it is out of the spec (and of the connector): the stream never sees them
    source.sql("UPDATE app.parts SET label = 'while away' WHERE id <= 100")
    source.sql("DELETE FROM app.parts WHERE id BETWEEN 101 AND 150")
    source.sql(f"INSERT INTO app.parts SELECT g, 'away', 1 FROM generate_series({ROWS + 1000}, {ROWS + 1100}) g")
    both = source.spec("orders", "parts")
    with Workload(source, ["orders", "parts"], seed=11):  # type: ignore[arg-type]
        time.sleep(0.3)
        report = apply_ok(both)
    details = cdc_details(report)
    assert details["backfills"] == ["parts"]
    assert details["backfill_deletes"] >= 50  # the rows deleted while away, unseen by the stream
    apply_ok(both)
    exact(source, both, ["orders", "parts"])


@pytest.mark.timeout(900)
def test_backfill_command_rereads_a_table_while_the_stream_goes_on(source: Source) -> None:
    # no_data: no snapshot and no automatic backfill, so raw starts without the existing rows
    resolved = source.spec("orders", "parts", mode="no_data")
    apply_ok(resolved)
    assert source.raw("SELECT count(*) FROM raw.parts")[0][0] == 0
    with Workload(source, ["orders", "parts"], seed=3):  # type: ignore[arg-type]
        time.sleep(0.3)
        assert main(["backfill", str(source.root / "pipeline.yaml"), "--table", "parts", "-q"]) == 0
        result = Pipeline(resolved).backfill("orders", "id > 700", progress=False)
    assert result["ok"] and result["rows"] > 0, result
    assert result["where"] == "id > 700"
    assert source.raw("SELECT count(*) FROM raw.orders WHERE id <= 700 AND _op = 'r'")[0][0] == 0
    assert source.raw("SELECT count(*) FROM raw.orders WHERE id > 700 AND id <= 1500 AND _op = 'r'")[0][0] > 0
    assert coverage(resolved, "orders")["backfill"]["where"] == "id > 700"
    assert not Pipeline(resolved).verify().ok
    with Workload(source, ["orders", "parts"], seed=5):  # type: ignore[arg-type]
        time.sleep(0.2)
        assert Pipeline(resolved).backfill("orders", progress=False)["ok"]
    apply_ok(resolved)
    exact(source, resolved, ["orders", "parts"])
