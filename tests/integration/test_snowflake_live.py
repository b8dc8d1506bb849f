"""The same load + dbt steps on a real Snowflake account (skipped unless SNOWFLAKE_ACCOUNT and credentials are set).

Needs: SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER, SNOWFLAKE_PASSWORD or SNOWFLAKE_PRIVATE_KEY_PATH (+ optional
SNOWFLAKE_PRIVATE_KEY_PASSPHRASE), SNOWFLAKE_WAREHOUSE, SNOWFLAKE_DATABASE (the role must create schemas there), and
a real S3 lake Snowflake can reach: LIVE_LAKE_URL (s3://bucket/prefix) with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
(stage_credentials: keys) — Snowflake cannot read a localhost moto. Raw and analytics schemas get a random suffix
and are dropped afterwards; the lake prefix is removed too.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REQUIRED = ("SNOWFLAKE_ACCOUNT", "SNOWFLAKE_USER", "LIVE_LAKE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not all(os.environ.get(v) for v in REQUIRED)
        or not (os.environ.get("SNOWFLAKE_PASSWORD") or os.environ.get("SNOWFLAKE_PRIVATE_KEY_PATH")),
        reason="live Snowflake: set " + ", ".join(REQUIRED) + " and SNOWFLAKE_PASSWORD or SNOWFLAKE_PRIVATE_KEY_PATH"),
]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    pytest.importorskip("snowflake.connector")
    pytest.importorskip("dbt.adapters.snowflake")
    from bankflow.lake.filesystem import lake_filesystem
    from bankflow.spec.loader import load_spec
    from bankflow.warehouses.snowflake.adapter import SnowflakeAdapter
    from tests.integration.test_snowflake_dbt import raw_banking, write_raw_to_lake

    suffix = uuid.uuid4().hex[:8]
    bucket_url = os.environ["LIVE_LAKE_URL"].rstrip("/")
    bucket, _, prefix = bucket_url.removeprefix("s3://").partition("/")
    environ = {**os.environ, "LAKE_BUCKET": bucket, "PGPASSWORD": os.environ.get("PGPASSWORD", "unused-password"),
               "SNOWFLAKE_AUTHENTICATOR": "key_pair" if os.environ.get("SNOWFLAKE_PRIVATE_KEY_PATH") else "password"}
    resolved = load_spec(REPO / "pipelines" / "banking.yaml", env="stack", environ=environ, check_dbt=False)
    root = tmp_path_factory.mktemp("sf_live")
    project = root / "banking_dbt"
    shutil.copytree(REPO / "banking_dbt", project, ignore=shutil.ignore_patterns("target", "logs"))
    spec = resolved.spec
    assert spec.transform is not None
    spec = spec.model_copy(update={
        "state_dir": str(root / "state"),
        "lake": spec.lake.model_copy(update={"url": f"s3://{bucket}/{prefix + '/' if prefix else ''}bankflow_"
                                                    f"{suffix}", "s3_endpoint": None}),
        "warehouse": spec.warehouse.model_copy(update={"raw_schema": f"raw_{suffix}",
                                                        "stage": f"bankflow_lake_{suffix}"}),
        "transform": spec.transform.model_copy(update={"project_dir": str(project),
                                                       "target_schema": f"analytics_{suffix}"}),
    })
    resolved = dataclasses.replace(resolved, spec=spec)
    fs, lake_root = lake_filesystem(resolved)
    log = raw_banking.RawBankingLog(seed=20240601)
    adapter = SnowflakeAdapter(resolved)
    try:
        yield {"resolved": resolved, "log": log, "fs": fs, "adapter": adapter, "suffix": suffix,
               "write": lambda batch: write_raw_to_lake(log, resolved, fs, batch)}
    finally:
        database = spec.warehouse.database.upper()
        for schema in (f"RAW_{suffix}".upper(), f"ANALYTICS_{suffix}".upper()):
            adapter.execute(f'DROP SCHEMA IF EXISTS "{database}"."{schema}" CASCADE')
        adapter.close()
        if fs.exists(lake_root):
            fs.rm(lake_root, recursive=True)


def test_live_load_and_dbt(live: dict[str, Any]) -> None:
    from bankflow.stages import load as load_stage
    from bankflow.stages import transform as transform_stage
    from bankflow.stages.base import Progress, RunContext
    from tests.integration.test_snowflake_dbt import raw_banking

    ctx = RunContext(resolved=live["resolved"], progress=Progress(enabled=False))
    raw_banking.build_initial(live["log"])
    written = live["write"](1)
    first = load_stage.run(ctx)
    assert (first.files, first.rows) == (3, sum(written.values()))
    assert all(r["status"] == "LOADED" for r in first.details["copy_results"])
    assert (load_stage.run(ctx).files, load_stage.run(ctx).rows) == (0, 0)
    steps = transform_stage.run(ctx).details["steps"]
    assert all(s["success"] for s in steps)

    raw_banking.build_more(live["log"])
    written = live["write"](2)
    second = load_stage.run(ctx)
    assert second.rows == sum(written.values())
    steps = transform_stage.run(ctx).details["steps"]
    assert all(s["success"] for s in steps)
    adapter = live["adapter"]
    schema = f'"{live["resolved"].spec.warehouse.database.upper()}"."ANALYTICS_{live["suffix"].upper()}"'
    n, distinct = adapter.query(f"select count(*), count(distinct id) from {schema}.fact_transactions")[0]
    assert n == distinct == len(live["log"].rows["transactions"])
