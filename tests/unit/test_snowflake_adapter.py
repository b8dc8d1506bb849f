"""SnowflakeAdapter pieces that need no warehouse, and `bankflow plan --env stack` writing the Snowflake load SQL.

The plan tests use fakesnow's patch only so that `plan` can ask the (empty) ledger without a real account, and
moto for the lake; the point is that `warehouse/snowflake/load.sql` is exactly what the adapter executes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bankflow.render.warehouse import FILES_PLACEHOLDER, load_statements
from bankflow.spec.loader import load_spec

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "pipelines" / "banking.yaml"
BUCKET = "plan-lake"


def stack_environ(endpoint: str) -> dict[str, str]:
    return {"LAKE_BUCKET": BUCKET, "S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test-access-key",
            "AWS_SECRET_ACCESS_KEY": "test-secret-key", "PGPASSWORD": "pg-secret", "SNOWFLAKE_ACCOUNT": "fakesnow",
            "SNOWFLAKE_USER": "fake", "SNOWFLAKE_PASSWORD": "sf-secret-value"}


def test_snowflake_type_rebuilds_rendered_types() -> None:
    from bankflow.warehouses.snowflake.adapter import snowflake_type

    assert snowflake_type("NUMBER", 19, 0, None, None) == "NUMBER(19,0)"
    assert snowflake_type("NUMBER", 18, 2, None, None) == "NUMBER(18,2)"
    assert snowflake_type("TEXT", None, None, 16777216, None) == "VARCHAR"
    assert snowflake_type("TEXT", None, None, 3, None) == "VARCHAR(3)"
    assert snowflake_type("TIMESTAMP_TZ", None, None, None, 6) == "TIMESTAMP_TZ(6)"
    assert snowflake_type("TIMESTAMP_TZ", None, None, None, None) == "TIMESTAMP_TZ"
    assert snowflake_type("boolean", None, None, None, None) == "BOOLEAN"


def test_key_pair_connect_kwargs_decrypt_the_key(tmp_path: Path) -> None:
    """key_pair: the PEM is decrypted with the passphrase from the spec and passed as DER, no password sent."""
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    from bankflow.spec.models import SnowflakeWarehouse
    from bankflow.warehouses.snowflake.adapter import connect_kwargs

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "rsa_key.p8"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"pass-phrase")))
    warehouse = SnowflakeWarehouse(account="acme-xy12345", user="loader", authenticator="key_pair",
                                   private_key_path=str(pem), private_key_passphrase="pass-phrase",
                                   role="loader_role", warehouse="load_wh", database="banking",
                                   stage_credentials="keys")
    kwargs = connect_kwargs(warehouse)
    assert "password" not in kwargs
    assert kwargs["private_key"] == key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption())
    assert (kwargs["account"], kwargs["role"], kwargs["warehouse"], kwargs["database"]) == (
        "acme-xy12345", "loader_role", "load_wh", "banking")
    assert "host" not in kwargs and "protocol" not in kwargs

    fake = warehouse.model_copy(update={"authenticator": "password", "password": "pw", "host": "127.0.0.1",
                                        "port": 8123, "protocol": "http"})
    kwargs = connect_kwargs(fake)
    assert (kwargs["password"], kwargs["host"], kwargs["port"], kwargs["protocol"]) == ("pw", "127.0.0.1", 8123,
                                                                                         "http")


def _plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str, *extra: str) -> tuple[int, str, str]:
    from bankflow.cli import main

    for name, value in stack_environ(endpoint).items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "plan"
    code = main(["plan", str(SPEC), "--env", "stack", "--out", str(out), *extra])
    return code, (out / "warehouse" / "snowflake" / "load.sql").read_text(encoding="utf-8"), str(out)


def test_plan_offline_writes_the_files_placeholder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, load_sql, out = _plan(tmp_path, monkeypatch, "http://127.0.0.1:9", "--offline")
    assert code in (0, 3)
    resolved = load_spec(SPEC, env="stack", environ=stack_environ("http://127.0.0.1:9"))
    assert load_sql == "\n".join(s for t in resolved.spec.tables for s in load_statements(resolved, t, None))
    assert load_sql.count(f"FILES = ({FILES_PLACEHOLDER})") == 3
    assert 'COPY INTO "BANKING"."RAW"."CUSTOMERS"' in load_sql
    written = "".join(p.read_text(encoding="utf-8") for p in Path(out).rglob("*") if p.is_file())
    printed = capsys.readouterr().out
    for secret in ("sf-secret-value", "pg-secret"):
        assert secret not in written and secret not in printed


@pytest.mark.integration
def test_plan_with_reachable_lake_lists_the_pending_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          s3_server: Any) -> None:
    fakesnow = pytest.importorskip("fakesnow")
    s3_server.create_bucket(BUCKET)
    s3 = s3_server.filesystem()
    keys = {"customers": ["customers/date=2024-06-01/lsn=0000000000000001-0000000000000009.parquet",
                          "customers/date=2024-06-02/lsn=000000000000000A-0000000000000010.parquet"],
            "accounts": ["accounts/date=2024-06-01/lsn=0000000000000002-0000000000000003.parquet"],
            "transactions": []}
    for table_keys in keys.values():
        for key in table_keys:
            s3.pipe(f"{BUCKET}/banking/{key}", b"PAR1")  # plan only lists keys; it never reads them
    with fakesnow.patch():
        code, load_sql, _ = _plan(tmp_path, monkeypatch, s3_server.endpoint_url)
    assert code in (0, 3)
    resolved = load_spec(SPEC, env="stack", environ=stack_environ(s3_server.endpoint_url))
    expected = []
    for table in resolved.spec.tables:
        if keys[table.name]:
            expected.extend(load_statements(resolved, table, keys[table.name]))
        else:
            expected.append(f"-- {table.name}: no pending files\n")
    assert load_sql == "\n".join(expected)
    assert FILES_PLACEHOLDER not in load_sql
    assert "FILES = ('customers/date=2024-06-01/lsn=0000000000000001-0000000000000009.parquet', " in load_sql
