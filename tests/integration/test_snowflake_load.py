"""The Snowflake load path on fakesnow (in-process, `fakesnow.patch()`) reading Parquet from a real S3 (moto).

What runs for real: bankflow's rendered setup SQL (schema, file format, external stage with keys, raw tables), the
rendered COPY INTO … FILES=(…) statements, the adapter's ledger, the load stage's pending-file logic and schema drift
(ALTER TABLE ADD COLUMN before the COPY). fakesnow executes the COPY on its DuckDB connection, which reads the
stage URL through an s3fs filesystem registered on it (DuckDB's httpfs cannot be downloaded here). The stage URL is
`s3compat://…` (the lake has an endpoint), so the registered filesystem also answers that protocol — a test-only
bridge, Snowflake itself resolves s3compat:// through the stage's ENDPOINT.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")]

fakesnow = pytest.importorskip("fakesnow")
pytest.importorskip("snowflake.connector")
s3fs = pytest.importorskip("s3fs")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from bankflow.errors import StageError  # noqa: E402
from bankflow.render.warehouse import load_statements  # noqa: E402
from bankflow.spec.loader import ResolvedSpec, load_spec  # noqa: E402
from bankflow.stages import load as load_stage  # noqa: E402
from bankflow.stages.base import Progress, RunContext  # noqa: E402

UTC = timezone.utc
BASE_COLUMNS = [
    "{name: id, type: bigint, nullable: false}",
    "{name: email, type: text}",
    "{name: balance, type: 'numeric(18,2)'}",
    "{name: created_at, type: timestamptz}",
]


class S3CompatFileSystem(s3fs.S3FileSystem):  # type: ignore[misc,name-defined]
    """s3fs answering s3compat:// too, so fakesnow's DuckDB can read the stage URL from moto."""

    protocol = ("s3compat", "s3", "s3a")


def write_spec(directory: Path, endpoint: str, bucket: str, columns: list[str]) -> ResolvedSpec:
    """A one-table spec: lake on moto, warehouse Snowflake (fakesnow intercepts the connector)."""
    directory.mkdir(parents=True, exist_ok=True)
    body = textwrap.dedent("""\
        version: 1
        name: sf_load
        state_dir: state
        source: {type: postgres, database: bank, user: postgres, schema: banking}
        tables:
          - name: customers
            primary_key: [id]
            columns:
        """) + "".join(f"      - {c}\n" for c in columns) + textwrap.dedent(f"""\
        lake:
          url: s3://{bucket}/banking
          layout: "{{table}}/date={{date}}"
          s3_endpoint: {endpoint}
          s3_key: test-access-key
          s3_secret: ${{LAKE_SECRET}}
        warehouse:
          type: snowflake
          account: fakesnow
          user: fake
          password: ${{SF_PASSWORD}}
          warehouse: compute_wh
          database: banking
          stage_credentials: keys
        """)
    path = directory / "pipeline.yaml"
    path.write_text(body, encoding="utf-8")
    return load_spec(path, environ={"LAKE_SECRET": "test-secret-key", "SF_PASSWORD": "snow-secret"}, check_dbt=False)


def write_file(s3: Any, resolved: ResolvedSpec, key: str, first_id: int, n: int,
               extra: dict[str, list[Any]] | None = None) -> str:
    """A lake Parquet file shaped like the load stage's input (spec columns + CDC columns)."""
    from bankflow.lake.arrow_schema import table_arrow_schema

    table = resolved.spec.tables[0]
    schema = table_arrow_schema(table)
    ts = datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    data: dict[str, list[Any]] = {
        "id": list(range(first_id, first_id + n)),
        "email": [f"c{i}@example.com" for i in range(first_id, first_id + n)],
        "balance": [Decimal(i) / 100 for i in range(first_id, first_id + n)],
        "created_at": [ts + timedelta(microseconds=i) for i in range(n)],
        "_op": ["c"] * n,
        "_lsn": list(range(first_id, first_id + n)),
        "_tx_id": [first_id] * n,
        "_source_ts": [ts] * n,
        "_file": [key] * n,
        **(extra or {}),
    }
    root = resolved.spec.lake.url.removeprefix("s3://")
    with s3.open(f"{root}/{key}", "wb") as handle:
        pq.write_table(pa.table({f.name: data[f.name] for f in schema}, schema=schema), handle)
    return key


@pytest.fixture
def lake(s3_server: Any, request: pytest.FixtureRequest) -> tuple[Any, str]:
    """A fresh bucket per test (moto keeps state for the session)."""
    bucket = "sf-" + request.node.name.lower().replace("_", "-")[:50]
    s3_server.create_bucket(bucket)
    return s3_server.filesystem(), bucket


@pytest.fixture
def fake_snowflake(s3_server: Any) -> Iterator[None]:
    """fakesnow patched in; its DuckDB reads s3:// and s3compat:// from moto."""
    import snowflake.connector

    with fakesnow.patch():
        bootstrap = snowflake.connector.connect(account="fakesnow", user="fake", password="x")
        # the filesystem is registered on the shared DuckDB instance, so every later connection sees it
        bootstrap._duck_conn.register_filesystem(
            S3CompatFileSystem(**s3_server.storage_options(), skip_instance_cache=True))
        yield


def _run_load(resolved: ResolvedSpec) -> Any:
    return load_stage.run(RunContext(resolved=resolved, progress=Progress(enabled=False)))


def _dict_rows(adapter: Any, sql: str) -> list[dict[str, Any]]:
    cursor = adapter.con.cursor()
    try:
        cursor.execute(sql)
        names = [d[0].lower() for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        cursor.close()


def _adapter(resolved: ResolvedSpec) -> Any:
    from bankflow.warehouses import connect_warehouse

    return connect_warehouse(resolved)


def test_setup_creates_stage_tables_and_ledger(fake_snowflake: None, lake: tuple[Any, str],
                                               s3_server: Any, tmp_path: Path) -> None:
    _, bucket = lake
    resolved = write_spec(tmp_path, s3_server.endpoint_url, bucket, BASE_COLUMNS)
    adapter = _adapter(resolved)
    try:
        executed = adapter.setup()
        assert not any("snow-secret" in s or "AWS_SECRET_KEY = 'test-secret-key'" in s for s in executed)
        tables = {r[0] for r in adapter.query(
            "SELECT table_name FROM banking.information_schema.tables WHERE table_schema = 'RAW'")}
        assert {"CUSTOMERS", "_BANKFLOW_LOADED_FILES"} <= tables
        stages = [(r["name"], r["url"]) for r in _dict_rows(adapter, "SHOW STAGES IN SCHEMA BANKING.RAW")]
        assert stages == [("BANKFLOW_LAKE", f"s3compat://{bucket}/banking/")]
        assert adapter.table_columns(resolved.spec.tables[0]) == {
            "id": "NUMBER(19,0)", "email": "VARCHAR", "balance": "NUMBER(18,2)", "created_at": "TIMESTAMP_TZ",
            "_op": "VARCHAR(1)", "_lsn": "NUMBER(19,0)", "_tx_id": "NUMBER(19,0)", "_source_ts": "TIMESTAMP_TZ",
            "_file": "VARCHAR"}
        # idempotent: a second setup changes nothing and adds no column
        assert len(adapter.setup()) == len(executed)
    finally:
        adapter.close()


def test_load_stage_loads_each_file_exactly_once(fake_snowflake: None, lake: tuple[Any, str],
                                                 s3_server: Any, tmp_path: Path) -> None:
    s3, bucket = lake
    resolved = write_spec(tmp_path, s3_server.endpoint_url, bucket, BASE_COLUMNS)
    keys = [write_file(s3, resolved, f"customers/date=2024-06-01/lsn={i:016X}-{i + 9:016X}.parquet", i, 10)
            for i in (1, 11, 21)]

    first = _run_load(resolved)
    assert (first.files, first.rows) == (3, 30)
    results = first.details["copy_results"]
    assert sorted(r["status"] for r in results) == ["LOADED"] * 3
    assert all(r["rows_loaded"] == 10 and r["file"].endswith(k) for r, k in zip(results, keys, strict=True))

    second = _run_load(resolved)
    assert (second.files, second.rows) == (0, 0)

    # a retry that rewrites a file under the same key (same position, same rows) must not double it
    write_file(s3, resolved, keys[1], 11, 10)
    third = _run_load(resolved)
    assert (third.files, third.rows) == (0, 0)

    adapter = _adapter(resolved)
    try:
        rows = adapter.query('SELECT count(*), count(DISTINCT "ID"), min("BALANCE"), max("BALANCE") '
                             'FROM "BANKING"."RAW"."CUSTOMERS"')
        assert rows == [(30, 30, Decimal("0.01"), Decimal("0.30"))]
        # microseconds and the zone survive
        ts = adapter.query('SELECT "CREATED_AT" FROM "BANKING"."RAW"."CUSTOMERS" WHERE "ID" = 2')[0][0]
        assert ts == datetime(2024, 6, 1, 12, 0, 0, 123457, tzinfo=UTC)
        ledger = adapter.query('SELECT FILE_KEY, RAW_TABLE, ROWS_LOADED, COPY_STATUS '
                               'FROM "BANKING"."RAW"."_BANKFLOW_LOADED_FILES" ORDER BY FILE_KEY')
        assert ledger == [(k, "customers", 10, "LOADED") for k in keys]
        assert load_stage.pending_files(resolved, adapter) == {"customers": []}
    finally:
        adapter.close()


def test_ledger_gap_is_guarded_by_copy_load_metadata(fake_snowflake: None, lake: tuple[Any, str],
                                                     s3_server: Any, tmp_path: Path) -> None:
    """COPY succeeded but the ledger write was lost: the retry's COPY skips the file and the ledger catches up."""
    s3, bucket = lake
    resolved = write_spec(tmp_path, s3_server.endpoint_url, bucket, BASE_COLUMNS)
    key = write_file(s3, resolved, "customers/date=2024-06-01/lsn=01-05.parquet", 1, 5)
    adapter = _adapter(resolved)
    try:
        adapter.setup()
        table = resolved.spec.tables[0]
        assert adapter.load_files(table, [key]).rows == 5
        adapter.execute('DELETE FROM "BANKING"."RAW"."_BANKFLOW_LOADED_FILES"')  # the lost ledger write
        assert load_stage.pending_files(resolved, adapter) == {"customers": [key]}
        retry = adapter.load_files(table, [key])
        assert (retry.files, retry.rows) == (1, 0)
        assert retry.results[0]["status"] == "LOAD_SKIPPED"
        assert adapter.query('SELECT count(*) FROM "BANKING"."RAW"."CUSTOMERS"') == [(5,)]
        assert adapter.ledger_keys(table) == {key}
    finally:
        adapter.close()


def test_new_column_is_added_before_the_copy(fake_snowflake: None, lake: tuple[Any, str],
                                             s3_server: Any, tmp_path: Path) -> None:
    s3, bucket = lake
    resolved = write_spec(tmp_path, s3_server.endpoint_url, bucket, BASE_COLUMNS)
    old = write_file(s3, resolved, "customers/date=2024-06-01/lsn=01-05.parquet", 1, 5)
    assert _run_load(resolved).rows == 5

    # the source gained a column: the spec declares it and new lake files carry it
    drifted = write_spec(tmp_path, s3_server.endpoint_url, bucket,
                         [*BASE_COLUMNS, "{name: segment, type: varchar(20)}"])
    new = write_file(s3, drifted, "customers/date=2024-06-02/lsn=06-0A.parquet", 6, 5,
                     extra={"segment": ["retail"] * 5})
    result = _run_load(drifted)
    assert (result.files, result.rows) == (1, 5)

    adapter = _adapter(drifted)
    try:
        assert adapter.table_columns(drifted.spec.tables[0])["segment"] == "VARCHAR(20)"
        rows = adapter.query('SELECT "_FILE", count(*), count("SEGMENT") FROM "BANKING"."RAW"."CUSTOMERS" '
                             'GROUP BY 1 ORDER BY 1')
        assert rows == [(old, 5, 0), (new, 5, 5)]
    finally:
        adapter.close()


def test_incompatible_type_change_is_a_clear_error(fake_snowflake: None, lake: tuple[Any, str],
                                                   s3_server: Any, tmp_path: Path) -> None:
    s3, bucket = lake
    resolved = write_spec(tmp_path, s3_server.endpoint_url, bucket, BASE_COLUMNS)
    write_file(s3, resolved, "customers/date=2024-06-01/lsn=01-05.parquet", 1, 5)
    assert _run_load(resolved).rows == 5

    changed = write_spec(tmp_path, s3_server.endpoint_url, bucket,
                         [c.replace("type: text", "type: bigint") for c in BASE_COLUMNS])
    with pytest.raises(StageError, match=r"column 'email' is VARCHAR in the warehouse but the spec declares "
                                         r"NUMBER\(19,0\)"):
        _run_load(changed)


def test_adapter_executes_the_rendered_statements(fake_snowflake: None, lake: tuple[Any, str],
                                                  s3_server: Any, tmp_path: Path) -> None:
    """What `plan` shows is what runs: the adapter's statements are `load_statements(...)` verbatim."""
    s3, bucket = lake
    resolved = write_spec(tmp_path, s3_server.endpoint_url, bucket, BASE_COLUMNS)
    keys = [write_file(s3, resolved, f"customers/date=2024-06-01/lsn={i:02X}.parquet", i, 1) for i in (1, 2)]
    adapter = _adapter(resolved)
    try:
        adapter.setup()
        outcome = adapter.load_files(resolved.spec.tables[0], keys)
        assert outcome.statements == load_statements(resolved, resolved.spec.tables[0], keys)
        assert "snow-secret" not in "".join(outcome.statements)
    finally:
        adapter.close()


def test_retype_snowflake_cannot_widen_loads_into_a_new_raw_column(fake_snowflake: None, lake: tuple[Any, str],
                                                                      s3_server: Any, tmp_path: Path) -> None:
    """schema_changes: evolve on Snowflake: numeric(18,2) → numeric(20,4) cannot be widened in place (a NUMBER's
    scale is fixed), so the engine writes the new values under `balance__numeric_20_4` (its schema history says
    so) and the load gives raw that column; the old one keeps the older values."""
    from bankflow.lake.positions import LsnPosition
    from bankflow.lake.schema_history import SchemaHistory
    from bankflow.source.schema_changes import Observed, ShapeFollower, SourceType, warehouse_widens

    s3, bucket = lake
    resolved = write_spec(tmp_path, s3_server.endpoint_url, bucket, BASE_COLUMNS)
    write_file(s3, resolved, "customers/date=2024-06-01/lsn=01-05.parquet", 1, 5)
    assert _run_load(resolved).rows == 5

    table = resolved.spec.tables[0].model_copy(update={"schema_changes": "evolve"})
    history = SchemaHistory(s3, resolved.spec.lake.url.removeprefix("s3://"))
    shapes = ShapeFollower(history, None, "banking", warehouse_widens(resolved))  # type: ignore[arg-type]
    event = [Observed("id", SourceType("bigint")), Observed("email", SourceType("text")),
             Observed("balance", SourceType("numeric(20,4)")),
             Observed("created_at", SourceType("timestamp with time zone"))]
    decision = shapes.observe(table, table, event, {"id", "email", "balance", "created_at"}, LsnPosition(9, 9),
                              None, "table customers")
    assert decision.shape is not None and "new raw column 'balance__numeric_20_4'" in shapes.accepted[0]

    from bankflow.lake.batch import TableBatch

    batch = TableBatch(decision.shape, lake_names=shapes.lake_names["customers"])
    batch.append_debezium({"op": "u", "after": {"id": 1, "email": "e", "balance": "12.3456",
                                                "created_at": "2024-06-02T00:00:00.000001Z"},
                           "source": {"lsn": 9, "txId": 9, "ts_us": 1}}, LsnPosition(9, 9))
    key = "customers/date=2024-06-02/lsn=09-09.parquet"
    with s3.open(f"{resolved.spec.lake.url.removeprefix('s3://')}/{key}", "wb") as handle:
        pq.write_table(batch.to_arrow(key), handle)
    result = _run_load(resolved)
    assert result.rows == 1
    adapter = _adapter(resolved)
    try:
        columns = adapter.table_columns(table)
        assert columns["balance"] == "NUMBER(18,2)" and columns["balance__numeric_20_4"] == "NUMBER(20,4)"
        rows = adapter.query("SELECT ID, BALANCE, BALANCE__NUMERIC_20_4 FROM BANKING.RAW.CUSTOMERS "
                             "WHERE _OP = 'u'")
        assert rows == [(1, None, Decimal("12.3456"))]
        assert adapter.query("SELECT count(*) FROM BANKING.RAW.CUSTOMERS WHERE BALANCE IS NOT NULL")[0][0] == 5
    finally:
        adapter.close()
