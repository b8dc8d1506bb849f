"""The Debezium connector config, the topology, the dbt profile, and secrets: never in any artifact or output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import bankflow
from bankflow.cli import main
from bankflow.engines.debezium.connector import REDACTED, connector_config, render_connector_json
from bankflow.render import render_all
from bankflow.render.warehouse import setup_statements
from bankflow.spec.loader import load_spec
from bankflow.spec.types import CDC_COLUMNS
from tests.specs.support import (
    BANKING_STACK_ENV,
    CASES,
    INVENTORY_CLOUD_ENV,
    MINIMAL,
    PG_SECRET,
    SECRETS,
    SPECS,
    copy_spec,
    load_case,
    set_env,
)

REQUIRED_CONNECTOR = {
    "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
    "plugin.name": "pgoutput",
    "decimal.handling.mode": "string",
    "key.converter": "org.apache.kafka.connect.json.JsonConverter",
    "key.converter.schemas.enable": "false",
    "value.converter": "org.apache.kafka.connect.json.JsonConverter",
    "value.converter.schemas.enable": "false",
}


@pytest.mark.parametrize("case", sorted(c for c in CASES if not c.endswith("-local")))
def test_connector_has_every_key(case: str) -> None:
    resolved = load_case(case)
    spec = resolved.spec
    body = json.loads(render_connector_json(resolved))
    assert body["name"] == spec.cdc.connector
    config = body["config"]
    assert all(isinstance(v, str) for v in config.values())  # Kafka Connect wants strings
    for key, value in REQUIRED_CONNECTOR.items():
        assert config[key] == value, key
    schema = spec.source.schema_name
    assert config["slot.name"] == spec.cdc.slot
    assert config["publication.name"] == spec.cdc.publication
    assert config["topic.prefix"] == spec.cdc.topic_prefix
    assert config["table.include.list"] == ",".join(f"{schema}\\.{t}" for t in [*(t.name for t in spec.tables),
                                                                                 "_bankflow_signal"])
    assert config["snapshot.mode"] == spec.cdc.snapshot_mode
    # Debezium may create the publication only where the spec lets bankflow manage it
    managed = "publication" in spec.source.manage
    assert config["publication.autocreate.mode"] == ("filtered" if managed else "disabled")
    assert config["heartbeat.interval.ms"] == str(spec.cdc.heartbeat_interval_ms)
    assert config["heartbeat.action.query"].startswith(f'INSERT INTO "{schema}"."_bankflow_heartbeat"')
    # Topics Debezium will write are the ones the topology consumes, plus the signal table's (not consumed).
    topics = {f"{config['topic.prefix']}.{t.replace(chr(92), '')}" for t in config["table.include.list"].split(",")}
    signal = f"{schema}._bankflow_signal"
    assert config["signal.data.collection"] == signal and config["signal.enabled.channels"] == "source"
    assert topics == {s["topic"] for s in json.loads(render_all(resolved).files["topology.json"])["streams"]} | {
        f"{config['topic.prefix']}.{signal}"}
    assert config["notification.sink.topic.name"] == f"{config['topic.prefix']}._bankflow_notifications"


def test_connector_values_for_banking_and_inventory() -> None:
    banking = connector_config(load_case("banking-stack"))
    assert (banking["slot.name"], banking["publication.name"], banking["topic.prefix"]) == (
        "bankflow_banking", "bankflow_banking", "banking")
    assert banking["snapshot.mode"] == "initial"
    assert banking["database.port"] == "5433" and banking["database.user"] == "cdc_reader"
    inventory = connector_config(load_case("inventory-cloud"))
    assert inventory["table.include.list"] == "inv\\.products,inv\\.stock_levels,inv\\._bankflow_signal"
    assert inventory["snapshot.mode"] == "no_data"
    assert inventory["heartbeat.interval.ms"] == "2500"
    assert inventory["database.sslmode"] == "require"


@pytest.mark.parametrize(("case", "variable"), [("banking-stack", "PGPASSWORD"),
                                                ("inventory-cloud", "INV_PG_PASSWORD")])
def test_connector_password_is_a_config_provider_reference(case: str, variable: str) -> None:
    resolved = load_case(case)
    for reveal in (False, True):
        config = connector_config(resolved, reveal=reveal)
        assert config["database.password"] == "${env:" + variable + "}"
        assert PG_SECRET not in json.dumps(config)


def test_clear_text_password_is_redacted_for_display(tmp_path: Path) -> None:
    spec = copy_spec(MINIMAL, tmp_path)
    spec.write_text(spec.read_text(encoding="utf-8").replace("  schema: shop\n",
                                                             "  schema: shop\n  password: plain-pw-123\n"),
                    encoding="utf-8")
    resolved = load_spec(spec, env="stack", environ={})
    assert [w.field for w in resolved.warnings] == ["source.password"]  # clear text with debezium: warned
    assert connector_config(resolved)["database.password"] == REDACTED
    assert connector_config(resolved, reveal=True)["database.password"] == "plain-pw-123"
    assert all("plain-pw-123" not in text for text in render_all(resolved).files.values())


def test_no_heartbeat_keys_when_heartbeats_are_off(tmp_path: Path) -> None:
    copy_spec(MINIMAL, tmp_path)
    spec = tmp_path / "minimal.yaml"
    spec.write_text(spec.read_text(encoding="utf-8").replace("heartbeat_interval_ms: 5000",
                                                             "heartbeat_interval_ms: 0"), encoding="utf-8")
    config = connector_config(load_spec(spec, env="stack", environ={}))
    assert "heartbeat.interval.ms" not in config and "heartbeat.action.query" not in config


# ---------------------------------------------------------------- topology

def test_inventory_topology() -> None:
    topology = json.loads(render_all(load_case("inventory-local")).files["topology.json"])
    assert topology["pipeline"] == "inventory" and topology["environment"] == "local"
    assert topology["engine"] == "builtin" and topology["event_source"] == "postgres-logical-replication"
    assert topology["consumer_group"] is None
    assert topology["compression"] == "snappy"
    assert topology["flush"] == {"max_rows": 5000, "max_bytes": 1048576, "max_seconds": 5.0}
    assert topology["dead_letter"] == "file://.state/inventory/lake/rejects"
    products, stock = topology["streams"]
    assert products["topic"] == "inventory.inv.products"
    assert products["table"] == "inv.products" and products["raw_table"] == "landing.products"
    assert stock["raw_table"] == "landing.stock" and stock["primary_key"] == ["product_id", "bin_code"]
    assert products["lake_path"] == "file://.state/inventory/lake/{schema}/{table}/dt={date}"
    arrow = {c["name"]: (c["type"], c["nullable"]) for s in (products, stock) for c in s["arrow_schema"]}
    assert arrow == {
        "product_id": ("string", False), "sku": ("string", False), "title": ("string", False),
        "unit_cost": ("decimal128(38,10)", False), "is_active": ("bool", False),
        "launched_on": ("date32", True), "attributes": ("string", True), "thumbnail": ("binary", True),
        "weight_grams": ("int32", True), "updated_at": ("timestamp[us]", False),
        "bin_code": ("int16", False), "quantity": ("int64", False), "ratio": ("float64", True),
        "counted_at": ("timestamp[us, UTC]", False),
        "_op": ("string", False), "_lsn": ("int64", False), "_tx_id": ("int64", True),
        "_source_ts": ("timestamp[us, UTC]", True), "_file": ("string", False),
    }


def test_stack_topology_reads_kafka() -> None:
    topology = json.loads(render_all(load_case("inventory-cloud")).files["topology.json"])
    assert topology["event_source"] == "kafka" and topology["consumer_group"] == "inventory-loader"
    assert topology["streams"][0]["lake_path"] == "s3://inventory-lake/cdc/{schema}/{table}/dt={date}"
    assert "offset" in topology["streams"][0]["file_key"]


@pytest.mark.parametrize("replica_identity", ["full", "default"])
def test_topology_matches_the_lake_schema(replica_identity: str, tmp_path: Path) -> None:
    """What topology.json says each lake file holds is exactly the Arrow schema the lake writer uses."""
    arrow_schema = pytest.importorskip("bankflow.lake.arrow_schema")
    copy_spec(MINIMAL, tmp_path)
    spec = tmp_path / "minimal.yaml"
    spec.write_text(spec.read_text(encoding="utf-8").replace(
        "    primary_key: [id]\n", f"    primary_key: [id]\n    replica_identity: {replica_identity}\n"),
        encoding="utf-8")
    resolveds = [load_spec(spec, environ={}), load_case("banking-local"), load_case("inventory-local")]
    for resolved in resolveds:
        streams = json.loads(render_all(resolved).files["topology.json"])["streams"]
        for table, stream in zip(resolved.spec.tables, streams, strict=True):
            lake = arrow_schema.table_arrow_schema(table)
            assert [(c["name"], c["nullable"]) for c in stream["arrow_schema"]] == [
                (f.name, f.nullable) for f in lake]
            for column, lake_field in zip(stream["arrow_schema"], lake, strict=True):
                type_of = (table.column(column["name"]).pg_type if not column["name"].startswith("_")
                           else dict(CDC_COLUMNS)[column["name"]])
                assert type_of.arrow == column["type"]
                assert arrow_schema.arrow_type(type_of) == lake_field.type


# ---------------------------------------------------------------- dbt profile

def _profile(case: str) -> dict:
    resolved = load_case(case)
    document = yaml.safe_load(render_all(resolved).files["dbt/profiles.yml"])
    assert document["bankflow"]["target"] == resolved.env
    return document["bankflow"]["outputs"][resolved.env]


def test_duckdb_profile() -> None:
    output = _profile("inventory-local")
    assert output == {"type": "duckdb", "path": str(SPECS / ".state" / "inventory" / "inventory.duckdb"),
                      "schema": "inventory_marts", "threads": 4}


def test_snowflake_password_profile() -> None:
    output = _profile("banking-stack")
    assert output == {"type": "snowflake", "account": "xy12345.eu-central-1", "user": "bankflow_loader",
                      "database": "banking", "warehouse": "compute_wh", "schema": "analytics", "threads": 2,
                      "role": "transformer", "password": "{{ env_var('SNOWFLAKE_PASSWORD') }}"}


def test_snowflake_key_pair_profile() -> None:
    output = _profile("inventory-cloud")
    assert output["private_key_path"] == "/secrets/inventory_loader.p8"
    assert output["private_key_passphrase"] == "{{ env_var('INV_SF_KEY_PASSPHRASE') }}"
    assert "password" not in output
    assert (output["user"], output["role"], output["threads"]) == ("inventory_loader", "loader", 4)


# ---------------------------------------------------------------- secrets never leak

@pytest.mark.parametrize(("case", "variables"), [("banking-stack", BANKING_STACK_ENV),
                                                 ("inventory-cloud", INVENTORY_CLOUD_ENV)])
def test_no_secret_in_any_artifact_or_plan_output(case: str, variables: dict[str, str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec_path, env, _ = CASES[case]
    set_env(monkeypatch, variables)
    resolved = load_spec(spec_path, env=env)
    assert set(SECRETS) & set(resolved.secrets)  # the secrets really were interpolated
    texts = list(render_all(resolved).files.values())
    texts += list(bankflow.render(resolved).files.values())
    texts.append("\n".join(setup_statements(resolved, reveal=False)))
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
    spec = copy_spec(spec_path, tmp_path)
    out = tmp_path / "plan"
    for argv in (["plan", str(spec), "--env", env, "--offline", "--out", str(out)],
                 ["plan", str(spec), "--env", env, "--offline", "--out", str(out), "--json"],
                 ["validate", str(spec), "--env", env, "--json"]):
        main(argv)
        captured = capsys.readouterr()
        for secret in SECRETS:
            assert secret not in captured.out + captured.err, (argv, secret)
    written = [p.read_text(encoding="utf-8") for p in out.rglob("*") if p.is_file()]
    assert len(written) == 7  # with the Airflow DAG
    for text in written:
        for secret in SECRETS:
            assert secret not in text


def test_reveal_is_only_for_execution() -> None:
    """`reveal=True` (what the load stage executes) does carry the stage credentials; displays never do."""
    resolved = load_case("banking-stack")
    revealed = "\n".join(setup_statements(resolved, reveal=True))
    assert BANKING_STACK_ENV["AWS_SECRET_ACCESS_KEY"] in revealed
    assert "AWS_KEY_ID = '****' AWS_SECRET_KEY = '****'" in "\n".join(setup_statements(resolved, reveal=False))
    assert resolved.redact(revealed).count("****") >= 2 and BANKING_STACK_ENV["AWS_SECRET_ACCESS_KEY"] not in (
        resolved.redact(revealed))
