"""Consent and the source contract on a source bankflow does not run (pg_server used as an external source).

The application's tables are created here, by "the application team"; bankflow must not create or alter them,
must run its setup statements only where `source.manage` allows, and must stop with what is missing otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bankflow.pipeline import Pipeline
from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import ResolvedSpec, load_spec
from tests.fixtures.external import AppDatabase, app_database

pytestmark = pytest.mark.integration

PASSWORD_VAR = "CONSENT_PG_PASSWORD"

APP_DDL = """
CREATE SCHEMA shop;
CREATE TABLE shop.items (id bigint PRIMARY KEY, label text, price numeric(12,2), note varchar(40));
CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER items_touch BEFORE UPDATE ON shop.items FOR EACH ROW EXECUTE FUNCTION shop.touch();
INSERT INTO shop.items VALUES (1, 'one', 1.50, 'a'), (2, 'two', 2.25, NULL);
"""

SPEC = """\
version: 1
name: consent
state_dir: {state_dir}
{source}tables:
  - name: items
    primary_key: [id]
    columns:
      - {{name: id, type: bigint, nullable: false}}
      - {{name: label, type: text}}
      - {{name: price, type: "numeric(12,2)"}}
{extra}cdc:
  engine: builtin
  topic_prefix: consent_{tag}
  slot: consent_{tag}
  publication: consent_{tag}
  heartbeat_interval_ms: 5000
lake:
  url: file://lake
  layout: "{{table}}/date={{date}}"
warehouse:
  type: duckdb
  path: wh.duckdb
"""

CATALOG_QUERIES = {
    "tables": "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'shop' ORDER BY 1",
    "columns": "SELECT table_name, column_name, data_type, is_nullable, numeric_precision, numeric_scale, "
               "character_maximum_length FROM information_schema.columns WHERE table_schema = 'shop' ORDER BY 1, 2",
    "relations": "SELECT c.relname, c.relkind, c.relreplident FROM pg_class c "
                 "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'shop' ORDER BY 1",
    "publications": "SELECT pubname, puballtables FROM pg_publication ORDER BY 1",
    "publication_tables": "SELECT pubname, schemaname, tablename FROM pg_publication_tables ORDER BY 1, 2, 3",
    "slots": "SELECT slot_name, plugin, database FROM pg_replication_slots ORDER BY 1",
    "triggers": "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal "
                "ORDER BY 1, 2",
    "grants": "SELECT grantee, table_name, privilege_type FROM information_schema.role_table_grants "
              "WHERE table_schema = 'shop' ORDER BY 1, 2, 3",
}


@dataclass
class Source:
    app: AppDatabase
    root: Path

    @property
    def pg(self) -> EmbeddedPostgres:
        return self.app.pg

    @property
    def database(self) -> str:
        return self.app.database

    @property
    def tag(self) -> str:
        return self.app.tag

    def spec(self, name: str, *, manage: list[str] | None = None, extra_column: str | None = None) -> ResolvedSpec:
        extra = f"      - {{name: {extra_column}, type: text}}\n" if extra_column else ""
        path = self.root / f"{name}.yaml"
        path.write_text(SPEC.format(state_dir=self.root / f"state-{name}", source=self.app.source_yaml(
            "shop", manage=manage or ()), extra=extra, tag=self.tag), encoding="utf-8")
        return load_spec(path)

    def catalog(self) -> dict[str, list[tuple[Any, ...]]]:
        return {name: self.app.sql(sql) for name, sql in CATALOG_QUERIES.items()}

    def slot_exists(self) -> bool:
        return self.app.slot_exists(f"consent_{self.tag}")


@pytest.fixture
def source(pg_server: EmbeddedPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Source]:
    with app_database(pg_server, "consent", APP_DDL, monkeypatch, PASSWORD_VAR) as app:
        yield Source(app, tmp_path)


def failed_source_stage(report: Any) -> str:
    assert not report.ok
    stage = report.stages[-1]
    assert stage.name == "source", report.to_dict()
    return str(stage.error)


def test_management_off_changes_nothing_and_lists_what_is_missing(source: Source) -> None:
    resolved = source.spec("off")
    before = source.catalog()
    report = Pipeline(resolved).apply(stages=["source", "cdc"], progress=False)
    error = failed_source_stage(report)
    assert source.catalog() == before  # tables, columns, replica identity, publications, slots, triggers
    assert f"no publication consent_{source.tag}" in error
    assert "items has replica identity default, the spec says full" in error
    assert "no heartbeat table" in error
    assert f"no replication slot consent_{source.tag}" in error
    assert "source/setup.sql" in error
    assert source.pg.password not in error


def test_manage_everything_applies(source: Source) -> None:
    resolved = source.spec("all", manage=["publication", "replica_identity", "heartbeat", "slot"])
    before = source.catalog()
    report = Pipeline(resolved).apply(stages=["source", "cdc"], progress=False)
    assert report.ok, report.to_dict()
    after = source.catalog()
    assert before["columns"] == [row for row in after["columns"] if row[0] != "_bankflow_heartbeat"]
    assert before["triggers"] == after["triggers"]
    assert ("items", "r", "f") in after["relations"]
    assert ("consent_" + source.tag, "shop", "items") in after["publication_tables"]
    assert source.slot_exists()
    warnings = report.stages[0].details.get("warnings", [])
    assert any("items.note" in w and "not be carried" in w for w in warnings), warnings
    assert report.stages[1].details  # the snapshot ran

    from bankflow.plan import plan
    from bankflow.status import collect_status

    notes = plan(resolved).notes
    assert any("source contract warning" in n and "items.note" in n for n in notes), notes
    contract = collect_status(resolved)["source"]["contract"]
    assert contract["ok"] and [d["column"] for d in contract["differences"]] == ["note"], contract


def test_a_spec_column_missing_in_the_table_stops_before_anything_is_created(source: Source) -> None:
    resolved = source.spec("missing", manage=["publication", "replica_identity", "heartbeat", "slot"],
                           extra_column="colour")
    before = source.catalog()
    report = Pipeline(resolved).apply(stages=["source", "cdc"], progress=False)
    error = failed_source_stage(report)
    line = next(i for i, text in enumerate(resolved.path.read_text().splitlines(), 1) if "colour" in text)
    assert f"{resolved.path}:{line}: items.colour: declared in the spec, missing in the source" in error, error
    assert source.catalog() == before
    assert not source.slot_exists()


def test_a_failed_first_snapshot_leaves_no_slot(source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    from bankflow.engines.builtin import snapshot as builtin_snapshot

    resolved = source.spec("snapfail", manage=["publication", "replica_identity", "heartbeat", "slot"])

    def fail(writer: Any, batch: Any) -> list[str]:
        raise RuntimeError("simulated failure while writing the snapshot")

    with monkeypatch.context() as patch:
        patch.setattr(builtin_snapshot, "_write", fail)
        report = Pipeline(resolved).apply(stages=["source", "cdc"], progress=False)
    assert not report.ok and report.stages[-1].name == "cdc", report.to_dict()
    assert not source.slot_exists()
    report = Pipeline(resolved).apply(stages=["source", "cdc"], progress=False)
    assert report.ok, report.to_dict()
    assert source.slot_exists()


def test_a_heartbeat_table_the_user_cannot_write_is_listed_as_missing(source: Source) -> None:
    """A DBA created the heartbeat table, but the pipeline's role may only read it: heartbeats would fail."""
    role = f"hb_{source.tag}"
    source.pg.execute(f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD %s", (source.pg.password,))
    try:
        source.pg.execute(f"GRANT USAGE ON SCHEMA shop TO {role}; GRANT SELECT ON shop.items TO {role}; "
                          "CREATE TABLE shop._bankflow_heartbeat (id int PRIMARY KEY, ts timestamptz); "
                          f"GRANT SELECT ON shop._bankflow_heartbeat TO {role}", dbname=source.database)
        resolved = source.spec("hb")
        path = resolved.path
        path.write_text(path.read_text().replace(f"user: {resolved.spec.source.user}", f"user: {role}"))
        resolved = load_spec(path)
        report = Pipeline(resolved).apply(stages=["source", "cdc"], progress=False)
        error = failed_source_stage(report)
        assert f"the user {role} cannot INSERT and UPDATE the heartbeat table" in error, error
        assert "no heartbeat table" not in error
    finally:
        source.pg.execute(f"DROP OWNED BY {role}", dbname=source.database)
        source.pg.execute(f"DROP ROLE {role}")


def test_a_slot_the_dba_created_is_kept_and_the_tables_backfilled(source: Source) -> None:
    """Management off: the DBA ran source/setup.sql (slot included). bankflow keeps that slot (it may not drop
    it, and it has no exported snapshot to read) and reads the existing rows with watermarks while it streams."""
    from bankflow.plan import plan
    from bankflow.source.ddl import setup_sql

    resolved = source.spec("dba")
    setup = setup_sql(resolved, owns_schema=False, manage=[])
    assert "\nSELECT pg_create_logical_replication_slot(" in setup  # for the DBA to run, not commented out
    before_slot, slot_line = setup.split("\nSELECT pg_create_logical_replication_slot(")
    source.pg.execute(before_slot, dbname=source.database)  # as a DBA would run the file (the slot on its own:
    source.pg.execute("SELECT pg_create_logical_replication_slot(" + slot_line, dbname=source.database)  # no writes)
    assert plan(resolved) is not None
    report = Pipeline(resolved).apply(stages=["source", "cdc", "load"], progress=False)
    assert report.ok, report.to_dict()
    source.pg.execute("INSERT INTO shop.items VALUES (3, 'three', 3.00, 'c')", dbname=source.database)
    report = Pipeline(resolved).apply(stages=["source", "cdc", "load"], progress=False)
    # `note` is in the table and not in the spec from the start: left out on purpose, not a schema change
    assert report.ok and not report.dead_letters, report.to_dict()
    lake = sorted(p.name for p in (source.root / "lake").rglob("*.parquet"))
    assert any("-backfill" in name for name in lake) and not any("snapshot" in name for name in lake), lake
    assert source.slot_exists()
    import duckdb

    con = duckdb.connect(str(source.root / "wh.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT id, _op FROM raw.items ORDER BY id").fetchall()
    finally:
        con.close()
    assert rows == [(1, "r"), (2, "r"), (3, "c")], rows
    verified = Pipeline(resolved).verify()
    assert verified.ok, verified.format()
