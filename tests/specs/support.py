"""Shared helpers of the declarative-core unit tests: spec paths, stack environments, golden files.

Goldens live in tests/golden/; regenerate them with `BANKFLOW_UPDATE_GOLDEN=1 pytest tests/unit`. Absolute paths
are written as tokens (<REPO>, <TMP>) so a golden is the same on every machine.
"""

from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path

import pytest

from bankflow.spec.loader import ResolvedSpec, load_spec

REPO = Path(__file__).resolve().parents[2]
SPECS = Path(__file__).resolve().parent
GOLDEN = REPO / "tests" / "golden"
BANKING = REPO / "pipelines" / "banking.yaml"
INVENTORY = SPECS / "inventory.yaml"
MINIMAL = SPECS / "minimal.yaml"

# Secret values: distinctive, so a leak into any output is found by a plain substring search.
PG_SECRET = "pg-S3CRET-7f1c2a"
AWS_KEY_ID = "AKIA-S3CRET-KEYID-42"
AWS_SECRET = "aws-S3CRET-9d8e7f"
SNOWFLAKE_SECRET = "sf-S3CRET-b4b4b4"
PASSPHRASE_SECRET = "pp-S3CRET-c0ffee"
SECRETS = (PG_SECRET, AWS_KEY_ID, AWS_SECRET, SNOWFLAKE_SECRET, PASSPHRASE_SECRET)

# Every variable pipelines/banking.yaml's `stack` environment reads, set explicitly (nothing from the machine).
BANKING_STACK_ENV = {
    "PGHOST": "pg.example.internal",
    "PGPORT": "5433",
    "PGUSER": "cdc_reader",
    "PGPASSWORD": PG_SECRET,
    "PGSSLMODE": "require",
    "CONNECT_URL": "http://connect.example.internal:8083",
    "CONNECT_DATABASE_HOST": "postgres",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka-1.example.internal:9092",
    "LAKE_BUCKET": "bank-lake",
    "S3_ENDPOINT_URL": "http://minio.example.internal:9000",
    "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    "SNOWFLAKE_ACCOUNT": "xy12345.eu-central-1",
    "SNOWFLAKE_USER": "bankflow_loader",
    "SNOWFLAKE_AUTHENTICATOR": "password",
    "SNOWFLAKE_PASSWORD": SNOWFLAKE_SECRET,
    "SNOWFLAKE_PRIVATE_KEY_PATH": "",
    "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": "",
    "SNOWFLAKE_ROLE": "transformer",
    "SNOWFLAKE_WAREHOUSE": "compute_wh",
    "SNOWFLAKE_DATABASE": "banking",
}

# Every variable tests/specs/inventory.yaml's `cloud` environment reads.
INVENTORY_CLOUD_ENV = {
    "INV_PG_HOST": "inventory-db.example.internal",
    "INV_PG_PORT": "6432",
    "INV_PG_PASSWORD": PG_SECRET,
    "INV_CONNECT_URL": "http://connect.example.internal:8083",
    "INV_KAFKA": "broker-1.example.internal:9092",
    "INV_BUCKET": "inventory-lake",
    "INV_SF_ACCOUNT": "ab98765",
    "INV_SF_USER": "inventory_loader",
    "INV_SF_KEY_PATH": "/secrets/inventory_loader.p8",
    "INV_SF_KEY_PASSPHRASE": PASSPHRASE_SECRET,
}

# (golden directory, spec, env, variables): every spec/environment pair the renderer tests cover.
CASES = {
    "banking-local": (BANKING, "local", {}),
    "banking-stack": (BANKING, "stack", BANKING_STACK_ENV),
    "inventory-local": (INVENTORY, "local", {}),
    "inventory-cloud": (INVENTORY, "cloud", INVENTORY_CLOUD_ENV),
}


def set_env(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def load_case(name: str) -> ResolvedSpec:
    """The resolved spec of a CASES entry, from exactly the case's variables (not the machine's)."""
    spec, env, variables = CASES[name]
    return load_spec(spec, env=env, environ=dict(variables))


def copy_spec(spec: Path, dest: Path) -> Path:
    """Copy a spec and what it refers to (dbt project, workload) into `dest`; return the copied spec's path."""
    if spec == BANKING:
        shutil.copytree(REPO / "pipelines", dest / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "banking_dbt", dest / "banking_dbt",
                        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
        return dest / "pipelines" / "banking.yaml"
    shutil.copy(spec, dest / spec.name)
    project = spec.with_name(spec.stem + "_dbt")
    shutil.copytree(project, dest / project.name)
    return dest / spec.name


def normalise(text: str, *tmp_paths: Path) -> str:
    """Replace machine-specific absolute paths by tokens."""
    for path in tmp_paths:
        text = text.replace(str(path.resolve()), "<TMP>").replace(str(path), "<TMP>")
    return text.replace(str(REPO), "<REPO>")


def check_golden(relative: str, text: str) -> None:
    """Compare `text` with tests/golden/<relative>; write it instead when BANKFLOW_UPDATE_GOLDEN=1."""
    path = GOLDEN / relative
    if os.environ.get("BANKFLOW_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    if not path.is_file():
        pytest.fail(f"golden file {path} is missing: run with BANKFLOW_UPDATE_GOLDEN=1 and review the result")
    expected = path.read_text(encoding="utf-8")
    if expected != text:
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True), text.splitlines(keepends=True),
                                            fromfile=f"golden/{relative}", tofile="rendered"))
        pytest.fail(f"rendered output differs from golden {relative} "
                    f"(BANKFLOW_UPDATE_GOLDEN=1 to accept):\n{diff}")
