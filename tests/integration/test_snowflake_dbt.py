"""banking_dbt on dbt-snowflake against fakesnow's server, fed through bankflow's own Snowflake load path.

The synthetic raw change log (tests/fixtures/raw_banking.py) is written as Parquet into a moto bucket, loaded by the
load stage (SnowflakeAdapter over HTTP to the fakesnow server, COPY INTO from the external stage) and then modelled
by the transform stage (dbtRunner, bankflow's rendered Snowflake profile) running the spec's four steps.

fakesnow needs a few test-only macro overrides (tests/fakesnow_macros/, README there). dbt's `macro-paths` cannot be
extended from the command line, so the project is copied to a temporary directory whose dbt_project.yml adds that
directory; the shipped banking_dbt/ stays untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")]

fakesnow = pytest.importorskip("fakesnow")
pytest.importorskip("fakesnow.server")
pytest.importorskip("dbt.adapters.snowflake")
s3fs = pytest.importorskip("s3fs")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from bankflow.spec.loader import ResolvedSpec, load_spec  # noqa: E402
from bankflow.stages import load as load_stage  # noqa: E402
from bankflow.stages import transform as transform_stage  # noqa: E402
from bankflow.stages.base import Progress, RunContext  # noqa: E402
from tests.fixtures import raw_banking  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROJECT_DIR = REPO / "banking_dbt"
TEST_MACROS = REPO / "tests" / "fakesnow_macros"
BUCKET = "sf-dbt-lake"




class S3CompatFileSystem(s3fs.S3FileSystem):  # type: ignore[misc,name-defined]
    """s3fs answering s3compat:// too (the stage URL of a lake with an endpoint)."""

    protocol = ("s3compat", "s3", "s3a")


def fakesnow_project(root: Path) -> Path:
    """banking_dbt copied with the test-only fakesnow macros added to its macro-paths."""
    project = root / "banking_dbt"
    shutil.copytree(PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    shutil.copytree(TEST_MACROS, project / "fakesnow_macros")
    config = project / "dbt_project.yml"
    text = config.read_text(encoding="utf-8")
    assert 'macro-paths: ["macros"]' in text
    config.write_text(text.replace('macro-paths: ["macros"]', 'macro-paths: ["macros", "fakesnow_macros"]'),
                      encoding="utf-8")
    return project


def stack_spec(root: Path, endpoint: str, server: dict[str, Any]) -> ResolvedSpec:
    """pipelines/banking.yaml in its `stack` environment, pointed at moto and the fakesnow server."""
    environ = {"LAKE_BUCKET": BUCKET, "S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test-access-key",
               "AWS_SECRET_ACCESS_KEY": "test-secret-key", "PGPASSWORD": "unused-password",
               "SNOWFLAKE_ACCOUNT": server["account"], "SNOWFLAKE_USER": server["user"],
               "SNOWFLAKE_PASSWORD": server["password"]}
    resolved = load_spec(REPO / "pipelines" / "banking.yaml", env="stack", environ=environ, check_dbt=False)
    spec = resolved.spec
    assert spec.transform is not None
    spec = spec.model_copy(update={
        "state_dir": str(root / "state"),
        "warehouse": spec.warehouse.model_copy(update={
            "host": server["host"], "port": server["port"], "protocol": server["protocol"]}),
        "transform": spec.transform.model_copy(update={"project_dir": str(fakesnow_project(root)),
                                                       "threads": 1}),
    })
    return dataclasses.replace(resolved, spec=spec)


def write_raw_to_lake(log: Any, resolved: ResolvedSpec, s3: Any, batch: int) -> dict[str, int]:
    """The generator's pending events as one lake file per table (what the consume stage writes)."""
    from bankflow.lake.arrow_schema import table_arrow_schema

    counts = {}
    root = resolved.spec.lake.url.removeprefix("s3://")
    for table in resolved.spec.tables:
        events = log.pending[table.name]
        counts[table.name] = len(events)
        if not events:
            continue
        lo, hi = min(e["_lsn"] for e in events), max(e["_lsn"] for e in events)
        key = f"{table.name}/date=2024-06-0{batch}/lsn={lo:016X}-{hi:016X}.parquet"
        schema = table_arrow_schema(table)
        rows = [{**e, "_file": key} for e in events]
        with s3.open(f"{root}/{key}", "wb") as handle:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), handle)
        log.written[table.name].extend(events)
        log.pending[table.name] = []
    return counts


class Pipeline:
    def __init__(self, resolved: ResolvedSpec, s3: Any, server: dict[str, Any]) -> None:
        import snowflake.connector

        self.resolved, self.s3 = resolved, s3
        self.con = snowflake.connector.connect(**server, database="banking", schema="analytics")
        self.log = raw_banking.RawBankingLog(seed=20240601)

    def ctx(self) -> RunContext:
        return RunContext(resolved=self.resolved, progress=Progress(enabled=False))

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        cursor = self.con.cursor()
        try:
            cursor.execute(sql)
            return [tuple(r) for r in cursor.fetchall()]
        finally:
            cursor.close()


@contextlib.contextmanager
def fakesnow_server() -> Iterator[dict[str, Any]]:
    """fakesnow's server app on a free port in a thread (like `fakesnow.server()`, whose name the submodule
    `fakesnow.server` shadows once imported); yields connector arguments."""
    import fakesnow.server
    import uvicorn

    from bankflow.process import free_port

    port = free_port("127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(fakesnow.server.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="fakesnow server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while thread.is_alive() and not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "fakesnow server did not start"
    try:
        yield {"user": "fake", "password": "fakesnow-password", "account": "fakesnow", "host": "127.0.0.1",
               "port": port, "protocol": "http"}
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def pipeline(s3_server: Any, tmp_path_factory: pytest.TempPathFactory,
             monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    import fakesnow.server

    s3_server.create_bucket(BUCKET)
    fakesnow.server.shared_fs.duck_conn.register_filesystem(
        S3CompatFileSystem(**s3_server.storage_options(), skip_instance_cache=True))
    with fakesnow_server() as server:
        # the profile refers to the password as env_var('SNOWFLAKE_PASSWORD'), as in a real deployment
        monkeypatch_module.setenv("SNOWFLAKE_PASSWORD", server["password"])
        resolved = stack_spec(tmp_path_factory.mktemp("sf_dbt"), s3_server.endpoint_url, server)
        pipe = Pipeline(resolved, s3_server.filesystem(), server)
        try:
            yield pipe
        finally:
            pipe.con.close()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def first_pass(pipeline: Pipeline) -> dict[str, Any]:
    raw_banking.build_initial(pipeline.log)
    written = write_raw_to_lake(pipeline.log, pipeline.resolved, pipeline.s3, 1)
    loaded = load_stage.run(pipeline.ctx())
    transformed = transform_stage.run(pipeline.ctx())
    return {"written": written, "load": loaded, "transform": transformed}


def _assert_balances(pipe: Pipeline) -> None:
    rows = pipe.query("select account_id, computed_balance, source_balance, difference "
                      "from analytics.account_balances order by account_id")
    expected = pipe.log.balances()
    assert {r[0] for r in rows} == set(expected)
    for account_id, computed, source, difference in rows:
        assert Decimal(source) == expected[account_id]
        assert Decimal(computed) == expected[account_id]
        assert Decimal(difference) == 0


def test_first_pass_loads_raw_and_runs_all_dbt_steps(pipeline: Pipeline, first_pass: dict[str, Any]) -> None:
    load, transform = first_pass["load"], first_pass["transform"]
    assert load.files == 3
    assert load.rows == sum(first_pass["written"].values())
    steps = {s["step"]: s for s in transform.details["steps"]}
    assert all(s["success"] and not s["failures"] for s in steps.values()), steps
    assert steps["tests"]["counts"].get("pass", 0) >= 60
    for table, events in pipeline.log.written.items():
        assert pipeline.query(f"select count(*) from raw.{table}") == [(len(events),)]
    _assert_balances(pipeline)
    n, distinct = pipeline.query("select count(*), count(distinct id) from analytics.fact_transactions")[0]
    assert n == distinct == len(pipeline.log.rows["transactions"])


@pytest.fixture(scope="module")
def second_pass(pipeline: Pipeline, first_pass: dict[str, Any]) -> dict[str, Any]:
    facts_before = pipeline.query("select count(*) from analytics.fact_transactions")[0][0]
    changes = raw_banking.build_more(pipeline.log)
    written = write_raw_to_lake(pipeline.log, pipeline.resolved, pipeline.s3, 2)
    loaded = load_stage.run(pipeline.ctx())
    transformed = transform_stage.run(pipeline.ctx())
    return {**changes, "written": written, "load": loaded, "transform": transformed, "facts_before": facts_before}


def test_second_pass_loads_only_new_files_and_merges(pipeline: Pipeline, second_pass: dict[str, Any]) -> None:
    """Incremental fact merge and a second snapshot (needs the test-only macro overrides on fakesnow)."""
    load, transform, log = second_pass["load"], second_pass["transform"], pipeline.log
    assert load.files == sum(1 for n in second_pass["written"].values() if n)
    assert load.rows == sum(second_pass["written"].values())
    steps = {s["step"]: s for s in transform.details["steps"]}
    assert all(s["success"] and not s["failures"] for s in steps.values()), steps
    for table, events in log.written.items():
        assert pipeline.query(f"select count(*) from raw.{table}") == [(len(events),)]

    # incremental fact: every transaction once, the new ones included
    ids = [i for (i,) in pipeline.query("select id from analytics.fact_transactions")]
    assert len(ids) == len(set(ids)) == len(log.rows["transactions"]) > second_pass["facts_before"]
    assert set(second_pass["new_transactions"]) <= set(ids)
    _assert_balances(pipeline)

    # second snapshot: the updated customer has a closed old version and a current new one
    updated = second_pass["updated"]
    snap = pipeline.query(f"select last_name, dbt_valid_to is null from analytics.customers_snapshot "
                          f"where id = {updated} order by dbt_valid_from")
    assert len(snap) >= 2 and snap[-1] == ("Changed-Name", True) and snap[-2][1] is False
    deleted = second_pass["deleted"]
    dim = pipeline.query(f"select is_current, is_deleted from analytics.dim_customers "
                         f"where customer_id = {deleted} order by valid_from")
    assert dim[-1] == (True, True)
