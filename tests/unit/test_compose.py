"""compose/ can't run here (no Docker engine), so its structure is checked: services, ports, variables, plugin."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bankflow.spec.loader import load_dotenv, load_spec

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose" / "docker-compose.yml"
ENV_EXAMPLE = REPO / "compose" / ".env.example"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def test_services_and_ports() -> None:
    services = compose()["services"]
    assert {"postgres", "kafka", "connect", "minio", "minio-init"} <= set(services)
    ports = {name: [p.split(":")[0] for p in s.get("ports", [])] for name, s in services.items()}
    assert ports["postgres"] == ["5432"] and ports["kafka"] == ["9092"]
    assert ports["connect"] == ["8083"] and "9000" in ports["minio"]


def test_postgres_runs_with_logical_replication() -> None:
    command = " ".join(compose()["services"]["postgres"]["command"])
    assert "wal_level=logical" in command and "max_replication_slots" in command


def test_kafka_is_kraft_without_zookeeper() -> None:
    services = compose()["services"]
    env = services["kafka"]["environment"]
    assert "broker" in env["KAFKA_PROCESS_ROLES"] and "controller" in env["KAFKA_PROCESS_ROLES"]
    assert not any("zookeeper" in name for name in services)


def test_connect_image_ships_the_postgres_connector_and_resolves_env_secrets() -> None:
    connect = compose()["services"]["connect"]
    default_image = re.search(r":-([^}]+)}", connect["image"]).group(1)
    # debezium/connect images carry debezium-connector-postgres in their plugin path.
    assert default_image.startswith("debezium/connect:")
    env = connect["environment"]
    assert env["CONNECT_CONFIG_PROVIDERS"] == "env"
    assert env["CONNECT_CONFIG_PROVIDERS_ENV_CLASS"].endswith("EnvVarConfigProvider")
    assert env["CONNECT_VALUE_CONVERTER_SCHEMAS_ENABLE"] == "false"
    # the catch-up barrier waits for a committed source offset: not a 60 s default flush interval
    assert int(env["CONNECT_OFFSET_FLUSH_INTERVAL_MS"]) <= 5000


def test_every_variable_is_defined_in_env_example() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    used = {m.group(1) for m in re.finditer(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text)}
    defined = set(load_dotenv(ENV_EXAMPLE))
    assert used, "compose uses no variables?"
    assert used <= defined, f"not in .env.example: {sorted(used - defined)}"


def test_minio_init_creates_the_lake_bucket() -> None:
    init = compose()["services"]["minio-init"]
    assert "mc mb" in " ".join(init["entrypoint"]) and init["environment"]["LAKE_BUCKET"] == "${LAKE_BUCKET}"


def test_stack_environment_points_at_compose_by_default() -> None:
    environ = {**load_dotenv(ENV_EXAMPLE), "SNOWFLAKE_ACCOUNT": "acct", "SNOWFLAKE_USER": "user"}
    environ = {k: v for k, v in environ.items() if not k.startswith(("PG", "KAFKA", "CONNECT", "S3_"))}
    environ |= {"PGPASSWORD": "x-password"}
    spec = load_spec(REPO / "pipelines" / "banking.yaml", env="stack", environ=environ, check_dbt=False).spec
    assert (spec.source.host, spec.source.port) == ("127.0.0.1", 5432)
    assert spec.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert spec.cdc.connect_url == "http://127.0.0.1:8083" and spec.cdc.connect_database_host == "postgres"
    assert spec.lake.s3_endpoint == "http://127.0.0.1:9000"
    assert spec.lake.url == "s3://bankflow-lake/banking"


def test_the_compose_postgres_starts_with_the_applications_tables() -> None:
    """bankflow creates no table on a source it does not run: the compose database gets the banking tables from
    an init script, which must be exactly what the spec declares."""
    from bankflow.source.ddl import application_schema_sql

    mounts = compose()["services"]["postgres"]["volumes"]
    assert "./postgres-init:/docker-entrypoint-initdb.d:ro" in mounts
    script = (REPO / "compose" / "postgres-init" / "10-banking-schema.sql").read_text(encoding="utf-8")
    rendered = application_schema_sql(load_spec(REPO / "pipelines" / "banking.yaml", environ={}))
    assert script.endswith(rendered)
    assert script.count("CREATE TABLE") == 3 and "_bankflow" not in rendered
