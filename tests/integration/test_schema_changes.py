"""Schema changes under a running pipeline, built-in engine: evolve and freeze, per table (issue 12, item 5).

The source is pg_server used as an external Postgres; the application alters its table between two applies,
with changes on both sides of the ALTER. Each test ends with `verify` and an independent count of the source
against raw, and checks the exact values that crossed the change.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from bankflow.lake.schema_history import SchemaHistory
from bankflow.pipeline import Pipeline
from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import ResolvedSpec, load_spec
from tests.fixtures.external import MANAGE_ALL, AppDatabase, app_database

pytestmark = pytest.mark.integration

PASSWORD_VAR = "SCHEMA_CHANGES_PG_PASSWORD"

APP_DDL = """
CREATE SCHEMA shop;
CREATE TABLE shop.items (id bigint PRIMARY KEY, label text, price numeric(12,2), note varchar(10));
INSERT INTO shop.items VALUES (1, 'one', 1.50, 'a'), (2, 'two', 2.25, NULL);
"""

SPEC = """\
version: 1
name: schemachanges
state_dir: {state_dir}
{source}tables:
  - name: items
    primary_key: [id]
    schema_changes: {policy}
    columns:
      - {{name: id, type: bigint, nullable: false}}
      - {{name: label, type: text}}
      - {{name: price, type: "numeric(12,2)"}}
      - {{name: note, type: "varchar(10)"}}
{extra}cdc:
  engine: builtin
  topic_prefix: sc_{tag}
  slot: sc_{tag}
  publication: sc_{tag}
lake:
  url: file://lake
  layout: "{{table}}/date={{date}}"
warehouse:
  type: duckdb
  path: wh.duckdb
"""


@dataclass
class Source:
    app: AppDatabase
    root: Path

    @property
    def tag(self) -> str:
        return self.app.tag

    def spec(self, policy: str, extra: str = "") -> ResolvedSpec:
        path = self.root / "pipeline.yaml"
        path.write_text(SPEC.format(state_dir=self.root / "state", source=self.app.source_yaml("shop",
                                    manage=MANAGE_ALL), policy=policy, extra=extra, tag=self.tag),
                        encoding="utf-8")
        return load_spec(path)

    def sql(self, text: str) -> list[tuple[Any, ...]]:
        return self.app.sql(text)

    def raw(self, sql: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(self.root / "wh.duckdb"), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def confirmed_lsn(self) -> str:
        return str(self.sql(f"SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                            f"WHERE slot_name = 'sc_{self.tag}'")[0][0])


@pytest.fixture
def source(pg_server: EmbeddedPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Source]:
    monkeypatch.chdir(tmp_path)
    with app_database(pg_server, "sc", APP_DDL, monkeypatch, PASSWORD_VAR) as app:
        yield Source(app, tmp_path)


STAGES = ["source", "cdc", "load"]


def apply_ok(resolved: ResolvedSpec) -> Any:
    report = Pipeline(resolved).apply(stages=STAGES, progress=False)
    assert report.ok, report.to_dict()
    return report


def verified(source: Source, resolved: ResolvedSpec) -> None:
    """`bankflow verify` passes and an independent count agrees: source rows = raw keys whose latest op is live."""
    report = Pipeline(resolved).verify()
    assert report.ok, report.format()
    live = source.raw("SELECT count(*) FROM (SELECT _op, row_number() OVER (PARTITION BY id ORDER BY _lsn DESC) "
                      "AS r FROM raw.items) WHERE r = 1 AND _op <> 'd'")[0][0]
    assert live == source.sql("SELECT count(*) FROM shop.items")[0][0]


def test_evolve_carries_an_added_column_from_its_first_event(source: Source) -> None:
    resolved = source.spec("evolve")
    apply_ok(resolved)
    source.sql("INSERT INTO shop.items VALUES (3, 'three', 3.00, 'c')")  # before the change
    source.sql("ALTER TABLE shop.items ADD COLUMN colour text")
    source.sql("INSERT INTO shop.items VALUES (4, 'four', 4.00, 'd', 'red')")
    source.sql("UPDATE shop.items SET colour = 'blue' WHERE id = 1")
    report = apply_ok(resolved)
    accepted = report.stages[1].details["schema_changes"]
    assert len(accepted) == 1 and "column 'colour' added (text)" in accepted[0], accepted
    rows = source.raw("SELECT id, _op, colour FROM raw.items ORDER BY _lsn, id")
    assert (3, "c", None) in rows and (4, "c", "red") in rows and (1, "u", "blue") in rows, rows
    assert not source.raw("SELECT 1 FROM raw.items WHERE id = 1 AND _op = 'u' AND label IS NULL")
    records = SchemaHistory.of(resolved).records("items")
    assert [c.kind for r in records for c in r.changes] == ["added"]
    verified(source, resolved)  # verify compares colour too: the table's current shape


def test_freeze_stops_at_the_change_and_continues_from_there_after_the_spec_is_updated(source: Source) -> None:
    resolved = source.spec("freeze")
    apply_ok(resolved)
    source.sql("INSERT INTO shop.items VALUES (3, 'three', 3.00, 'c')")
    source.sql("ALTER TABLE shop.items ADD COLUMN colour text")
    source.sql("BEGIN; INSERT INTO shop.items VALUES (4, 'four', 4.00, 'd', 'red'); "
               "UPDATE shop.items SET colour = 'blue' WHERE id = 1; COMMIT")
    source.sql("INSERT INTO shop.items VALUES (5, 'five', 5.00, 'e', 'green')")
    report = Pipeline(resolved).apply(stages=STAGES, progress=False)
    assert not report.ok and report.stages[-1].name == "cdc", report.to_dict()
    error = str(report.stages[-1].error)
    assert "column 'colour' added (text)" in error and "schema_changes: freeze" in error, error
    assert "To continue from exactly here" in error
    stopped_at = source.confirmed_lsn()
    # The same apply again stops at the same event: nothing past it was acknowledged.
    again = Pipeline(resolved).apply(stages=STAGES, progress=False)
    assert not again.ok and source.confirmed_lsn() == stopped_at
    assert not SchemaHistory.of(resolved).records("items")

    path = resolved.path
    text = path.read_text().replace('      - {name: note, type: "varchar(10)"}\n',
                                    '      - {name: note, type: "varchar(10)"}\n      - {name: colour, type: text}\n')
    path.write_text(text)
    resolved = load_spec(path)
    apply_ok(resolved)
    rows = source.raw("SELECT id, _op, colour FROM raw.items WHERE _op <> 'r' ORDER BY _lsn, id")
    assert rows == [(3, "c", None), (4, "c", "red"), (1, "u", "blue"), (5, "c", "green")], rows
    counts = source.raw("SELECT id, count(*) FROM raw.items WHERE _op <> 'r' GROUP BY id ORDER BY id")
    assert counts == [(1, 1), (3, 1), (4, 1), (5, 1)]  # nothing lost, nothing twice
    verified(source, resolved)


def test_evolve_records_a_dropped_column_instead_of_writing_nulls(source: Source) -> None:
    resolved = source.spec("evolve")
    apply_ok(resolved)
    source.sql("UPDATE shop.items SET note = 'z' WHERE id = 1")
    source.sql("ALTER TABLE shop.items DROP COLUMN note")
    source.sql("INSERT INTO shop.items VALUES (6, 'six', 6.00)")
    report = apply_ok(resolved)
    accepted = report.stages[1].details["schema_changes"]
    assert any("column 'note' dropped (was varchar(10))" in line for line in accepted), accepted
    records = SchemaHistory.of(resolved).records("items")
    assert [(c.kind, c.column) for r in records for c in r.changes] == [("dropped", "note")]
    assert "note" not in [column["name"] for column in records[-1].columns]
    # raw keeps what the column held; the files after the drop do not have it at all
    assert source.raw("SELECT note FROM raw.items WHERE id = 1 AND _op = 'u'") == [("z",)]
    import pyarrow.parquet as pq

    files = sorted((f for f in (source.root / "lake").rglob("items-*.parquet") if "snapshot" not in f.name),
                   key=lambda f: f.name)
    assert "note" not in pq.read_schema(files[-1]).names
    assert "note" in pq.read_schema(files[0]).names
    verified(source, resolved)


def test_evolve_widens_numeric_and_varchar_in_raw(source: Source) -> None:
    resolved = source.spec("evolve")
    apply_ok(resolved)
    source.sql("ALTER TABLE shop.items ALTER COLUMN price TYPE numeric(20,4), "
               "ALTER COLUMN note TYPE varchar(40)")
    source.sql("INSERT INTO shop.items VALUES (7, 'seven', 1234567890123.4567, 'a note longer than ten')")
    source.sql("UPDATE shop.items SET price = 0.0001 WHERE id = 2")
    report = apply_ok(resolved)
    accepted = report.stages[1].details["schema_changes"]
    assert any("price' changed type numeric(12,2) -> numeric(20,4)" in line for line in accepted), accepted
    assert any("note' changed type varchar(10) -> varchar(40)" in line for line in accepted), accepted
    types = dict(source.raw("SELECT column_name, data_type FROM information_schema.columns "
                            "WHERE table_name = 'items'"))
    assert types["price"] == "DECIMAL(20,4)", types
    rows = dict(source.raw("SELECT id, price FROM raw.items WHERE _op <> 'r'"))
    assert rows == {7: Decimal("1234567890123.4567"), 2: Decimal("0.0001")}
    assert source.raw("SELECT note FROM raw.items WHERE id = 7") == [("a note longer than ten",)]
    dead = list((source.root / "lake").rglob("*.jsonl"))
    assert not dead, dead
    verified(source, resolved)


# ---------------------------------------------------------------- Debezium (stack harness)


@pytest.mark.timeout(900)
def test_debezium_added_column_under_evolve_and_freeze(tmp_path: Path, pg_server: EmbeddedPostgres,
                                                       tansu_broker: Any, kafka_connect: Any,
                                                       s3_server: Any) -> None:
    """The banking pipeline on real Debezium + Kafka Connect + Tansu + S3 (moto) + DuckDB. customers evolves:
    a column added in the source reaches raw from its first event. accounts is frozen: the consumer stops at the
    first event with the new column, commits nothing past it, and after the spec is updated the next apply
    carries everything from there, once."""
    import yaml

    from tests.integration.test_stack_e2e import ENV, fresh_stack

    with fresh_stack(tmp_path, pg_server, tansu_broker, kafka_connect, s3_server, "dbzsc") as (resolved, sql):
        path = resolved.path
        document = yaml.safe_load(path.read_text())
        for table in document["tables"]:
            table["schema_changes"] = "evolve" if table["name"] == "customers" else "freeze"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        _debezium_added_column(load_spec(path, env=ENV), sql, tmp_path / "state" / "warehouse.duckdb")


def _debezium_added_column(resolved: ResolvedSpec, sql: Any, warehouse: Path) -> None:
    import yaml

    from tests.integration.test_stack_e2e import ENV

    path = resolved.path

    def raw(sql: str) -> list[tuple[Any, ...]]:
        try:
            con = duckdb.connect(str(warehouse), read_only=True)
        except duckdb.ConnectionException:  # dbt-duckdb holds the file in this process after a transform
            con = duckdb.connect(str(warehouse))
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    stages = ["cdc", "load"]
    pipeline = Pipeline(resolved)
    assert pipeline.apply(stages=["source"], progress=False).ok
    pipeline.generate(seed=5, progress=False)
    first = pipeline.apply(stages=stages, progress=False)
    assert first.ok, first.to_dict()

    sql("ALTER TABLE banking.customers ADD COLUMN nickname text")
    sql("UPDATE banking.customers SET nickname = 'nick-' || id, updated_at = now() WHERE id <= 3")
    evolved = pipeline.apply(stages=stages, progress=False)
    assert evolved.ok, evolved.to_dict()
    accepted = evolved.stages[0].details["schema_changes"]
    assert any("column 'nickname' added (text)" in line for line in accepted), accepted
    assert sorted(raw("SELECT id, nickname FROM raw.customers WHERE nickname IS NOT NULL")) == [
        (1, "nick-1"), (2, "nick-2"), (3, "nick-3")]

    sql("UPDATE banking.accounts SET status = status WHERE id = 1")  # before the change: carried
    sql("ALTER TABLE banking.accounts ADD COLUMN risk text")
    sql("UPDATE banking.accounts SET risk = 'low' WHERE id IN (1, 2)")
    frozen = pipeline.apply(stages=stages, progress=False)
    assert not frozen.ok and frozen.stages[-1].name == "cdc", frozen.to_dict()
    error = str(frozen.stages[-1].error)
    assert "column 'risk' added (text)" in error and "schema_changes: freeze" in error, error
    assert pipeline.apply(stages=["load"], progress=False).ok  # what came before the change is in the lake
    updates_before = raw("SELECT count(*) FROM raw.accounts WHERE _op = 'u'")[0][0]
    assert updates_before == 1  # the update before the ALTER; none after it

    document = yaml.safe_load(path.read_text())
    accounts = next(t for t in document["tables"] if t["name"] == "accounts")
    accounts["columns"].append({"name": "risk", "type": "text"})
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    resolved = load_spec(path, env=ENV)
    resumed = Pipeline(resolved).apply(stages=[*stages, "transform"], progress=False)
    assert resumed.ok, resumed.to_dict()
    assert raw("SELECT id, risk FROM raw.accounts WHERE _op = 'u' ORDER BY id, risk NULLS FIRST") == [
        (1, None), (1, "low"), (2, "low")]  # nothing lost, nothing twice
    for table in ("customers", "accounts"):
        live = raw(f"SELECT count(*) FROM (SELECT _op, row_number() OVER (PARTITION BY id ORDER BY _lsn DESC) "
                   f"AS r FROM raw.{table}) WHERE r = 1 AND _op <> 'd'")[0][0]
        assert live == sql(f"SELECT count(*) FROM banking.{table}")[0][0], table
    result = Pipeline(resolved).verify()
    assert result.ok, result.format()
