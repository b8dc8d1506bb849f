"""The source contract (catalog rows vs the spec, pure) and source/setup.sql, without a server."""

from __future__ import annotations

from pathlib import Path

from bankflow.plan import plan
from bankflow.render import render_all
from bankflow.source.contract import CatalogColumn, CatalogTable, compare, normalise_type
from bankflow.source.ddl import setup_sql
from bankflow.spec.loader import ResolvedSpec, load_spec

MINIMAL = Path(__file__).resolve().parents[1] / "specs" / "minimal.yaml"


def minimal() -> ResolvedSpec:
    return load_spec(MINIMAL, check_dbt=False)


def line_of(text: str) -> int:
    return next(i for i, line in enumerate(MINIMAL.read_text().splitlines(), 1) if text in line)


def items(*columns: CatalogColumn, key: tuple[str, ...] = ("id",), identity: str = "full") -> dict[str, CatalogTable]:
    return {"items": CatalogTable("items", list(columns), list(key), identity)}


ID = CatalogColumn("id", "bigint", True)
LABEL = CatalogColumn("label", "text", False)
PRICE = CatalogColumn("price", "numeric(12,2)", False)


def test_a_matching_catalog_has_no_findings() -> None:
    assert compare(minimal(), items(ID, LABEL, PRICE)) == []


def test_catalog_types_are_read_as_the_spec_writes_them() -> None:
    assert normalise_type("character varying(64)") == "varchar(64)"
    assert normalise_type("timestamp with time zone") == "timestamptz"
    assert normalise_type("character(3)") == "char(3)"
    assert normalise_type("numeric") == "numeric"  # no exact image: kept, so it differs from any spec type
    assert normalise_type("txn_status") == "txn_status"


def test_each_difference_names_the_spec_line() -> None:
    resolved = minimal()
    findings = compare(resolved, items(ID, CatalogColumn("label", "integer", False),
                                       CatalogColumn("colour", "character varying(20)", False),
                                       key=("id", "label"), identity="default"))
    text = [str(f) for f in findings]
    assert f"{resolved.path}:{line_of('name: price')}: items.price: declared in the spec, missing in the source " \
           "table (remove it from the spec or add it to the table)" in text
    assert f"{resolved.path}:{line_of('name: label')}: items.label: type text in the spec, integer in the source" \
        in text
    assert any(t.startswith(f"{resolved.path}:{line_of('columns:')}: items.colour: in the source "
                            "(character varying(20)), not in the spec: it would not be carried") for t in text)
    assert f"{resolved.path}:{line_of('primary_key')}: items: primary key (id) in the spec, (id, label) in the " \
           "source" in text
    severities = {f.column or f.message.split()[0]: f.severity for f in findings}
    assert severities == {"price": "error", "label": "error", "colour": "warning", "primary": "error",
                          "replica": "warning"}


def test_precision_scale_length_and_nullability() -> None:
    resolved = minimal()
    findings = compare(resolved, items(CatalogColumn("id", "bigint", False), LABEL,
                                       CatalogColumn("price", "numeric(20,4)", False)))
    assert [(f.column, f.severity, f.message) for f in findings] == [
        ("id", "warning", "NOT NULL in the spec, nullable in the source"),
        ("price", "error", "type numeric(12,2) in the spec, numeric(20,4) in the source")]


def test_a_missing_table_is_an_error() -> None:
    findings = compare(minimal(), {})
    assert [(f.table, f.severity) for f in findings] == [("items", "error")]
    assert "no table shop.items in the source" in str(findings[0])


SETUP_EXTERNAL = """\
-- Setup of the source shop.shop for pipeline mini
-- (rendered by `bankflow plan`; the source needs wal_level = logical)

-- grants the replication user needs (for a DBA to give)
ALTER ROLE "postgres" WITH REPLICATION;
GRANT USAGE ON SCHEMA "shop" TO "postgres";
GRANT SELECT ON "shop"."items" TO "postgres";

-- replica identity, as the spec declares it (for a DBA to run, or add replica_identity to source.manage)
ALTER TABLE "shop"."items" REPLICA IDENTITY FULL;

-- heartbeat table: keeps the slot advancing while the tables are idle (bankflow runs this)
CREATE TABLE IF NOT EXISTS "shop"."_bankflow_heartbeat" (id integer PRIMARY KEY, beat_at timestamptz NOT NULL);
GRANT SELECT, INSERT, UPDATE ON "shop"."_bankflow_heartbeat" TO "postgres";

-- publication: exactly the spec's tables (for a DBA to run, or add publication to source.manage)
CREATE PUBLICATION "bankflow" FOR TABLE "shop"."items";

-- replication slot (for a DBA to run, or add slot to source.manage)
-- bankflow then reads the tables' existing rows while it streams (a backfill with watermarks:
-- SELECT on the tables, pg_logical_emit_message), and never drops a slot it did not create
SELECT pg_create_logical_replication_slot('bankflow', 'pgoutput');
"""


def test_setup_sql_for_an_external_source_exactly() -> None:
    resolved = minimal()
    assert resolved.spec.cdc.publication == "bankflow" and resolved.spec.cdc.slot == "bankflow"
    assert setup_sql(resolved, owns_schema=False, manage=["heartbeat"]) == SETUP_EXTERNAL


def test_setup_sql_never_creates_application_tables_on_an_external_source(tmp_path: Path) -> None:
    text = render_all(minimal()).files["source/setup.sql"]
    assert 'CREATE TABLE IF NOT EXISTS "shop"."items"' not in text
    assert "CREATE TABLE" not in text.replace('CREATE TABLE IF NOT EXISTS "shop"."_bankflow_heartbeat"', "")
    owned = setup_sql(minimal(), owns_schema=True, manage=[])
    assert 'CREATE TABLE IF NOT EXISTS "shop"."items"' in owned


def test_offline_plan_says_the_contract_was_not_checked(tmp_path: Path) -> None:
    result = plan(minimal(), tmp_path / "out", check_live=False)
    assert "source/setup.sql" in result.files
    assert (tmp_path / "out" / "source" / "setup.sql").is_file()
    assert any("source contract" in note and "not checked" in note for note in result.notes)
