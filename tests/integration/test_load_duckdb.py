"""The DuckDB load path: ledger (each file once, also when rewritten under the same key), schema drift, errors.

Real Parquet files written with the lake's Arrow schema under a file:// lake, loaded by the load stage into a real
DuckDB file, with the rendered SQL.
"""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
duckdb = pytest.importorskip("duckdb")

from bankflow.errors import StageError  # noqa: E402
from bankflow.lake.arrow_schema import table_arrow_schema  # noqa: E402
from bankflow.spec.loader import ResolvedSpec, load_spec  # noqa: E402
from bankflow.stages import load as load_stage  # noqa: E402
from bankflow.stages.base import Progress, RunContext  # noqa: E402

pytestmark = pytest.mark.integration
UTC = timezone.utc
COLUMNS = ["{name: id, type: bigint, nullable: false}", "{name: email, type: text}",
           "{name: balance, type: 'numeric(18,2)'}", "{name: created_at, type: timestamptz}"]


def write_spec(directory: Path, columns: list[str]) -> ResolvedSpec:
    body = textwrap.dedent("""\
        version: 1
        name: duck_load
        state_dir: state
        source: {type: postgres, database: bank, user: postgres, schema: shop}
        tables:
          - name: clients
            primary_key: [id]
            columns:
        """) + "".join(f"      - {c}\n" for c in columns) + textwrap.dedent("""\
        lake: {url: "file://lake", layout: "{table}/date={date}"}
        warehouse: {type: duckdb, path: state/warehouse.duckdb, raw_schema: raw}
        """)
    path = directory / "pipeline.yaml"
    path.write_text(body, encoding="utf-8")
    return load_spec(path, env=None, environ={})


def write_file(resolved: ResolvedSpec, key: str, rows: list[dict]) -> None:
    table = resolved.spec.tables[0]
    schema = table_arrow_schema(table)
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    columns["_file"] = [key] * len(rows)
    path = resolved.resolve_path(resolved.spec.lake.url) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)


def rows(start: int, count: int, lsn: int, **extra: object) -> list[dict]:
    base = datetime(2026, 11, 23, 8, 0, 0, 123456, tzinfo=UTC)
    return [{"id": i, "email": f"c{i}@example.org", "balance": Decimal(f"{i}.05"), "created_at": base,
             "_op": "c", "_lsn": lsn + i, "_tx_id": 700 + i, "_source_ts": base + timedelta(microseconds=i),
             **extra} for i in range(start, start + count)]


def run_load(resolved: ResolvedSpec) -> dict:
    result = load_stage.run(RunContext(resolved, Progress(False)))
    return {"files": result.files, "rows": result.rows}


def raw(resolved: ResolvedSpec, sql: str) -> list[tuple]:
    con = duckdb.connect(str(resolved.state_dir / "warehouse.duckdb"))
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_each_file_once_even_when_rewritten_under_its_key(tmp_path: Path) -> None:
    resolved = write_spec(tmp_path, COLUMNS)
    write_file(resolved, "clients/date=2026-11-23/clients-a.parquet", rows(1, 3, 100))
    write_file(resolved, "clients/date=2026-11-23/clients-b.parquet", rows(4, 2, 100))
    assert run_load(resolved) == {"files": 2, "rows": 5}
    assert run_load(resolved) == {"files": 0, "rows": 0}
    # A replay rewrites a file under the same key: already in the ledger, so not loaded again.
    write_file(resolved, "clients/date=2026-11-23/clients-a.parquet", rows(1, 3, 100))
    write_file(resolved, "clients/date=2026-11-24/clients-c.parquet", rows(6, 1, 100))
    assert run_load(resolved) == {"files": 1, "rows": 1}
    assert raw(resolved, "select count(*), count(distinct id) from raw.clients") == [(6, 6)]
    ledger = raw(resolved, "select file_key, rows from raw._bankflow_loaded_files order by file_key")
    assert [k for k, _ in ledger] == ["clients/date=2026-11-23/clients-a.parquet",
                                      "clients/date=2026-11-23/clients-b.parquet",
                                      "clients/date=2026-11-24/clients-c.parquet"]
    assert [n for _, n in ledger] == [3, 2, 1]
    # Exact values: money as DECIMAL(18,2), timestamps with microseconds in UTC.
    balance, created = raw(resolved, "select balance, created_at from raw.clients where id = 2")[0]
    assert balance == Decimal("2.05") and created.microsecond == 123456 and created.utcoffset() == timedelta(0)


def test_a_new_column_is_added_before_the_load(tmp_path: Path) -> None:
    resolved = write_spec(tmp_path, COLUMNS)
    write_file(resolved, "clients/date=2026-11-23/clients-a.parquet", rows(1, 2, 100))
    run_load(resolved)
    widened = write_spec(tmp_path, [*COLUMNS, "{name: segment, type: 'varchar(20)'}"])
    write_file(widened, "clients/date=2026-11-23/clients-b.parquet", rows(3, 2, 200, segment="retail"))
    assert run_load(widened) == {"files": 1, "rows": 2}
    assert raw(widened, "select id, segment from raw.clients order by id") == [
        (1, None), (2, None), (3, "retail"), (4, "retail")]


def test_a_type_that_cannot_be_widened_is_a_clear_error(tmp_path: Path) -> None:
    resolved = write_spec(tmp_path, COLUMNS)
    write_file(resolved, "clients/date=2026-11-23/clients-a.parquet", rows(1, 2, 100))
    run_load(resolved)
    changed = write_spec(tmp_path, [c.replace("{name: email, type: text}", "{name: email, type: bigint}")
                                    for c in COLUMNS])
    with pytest.raises(StageError, match=r"column 'email' is VARCHAR .* declares BIGINT"):
        run_load(changed)


def test_a_source_column_named_filename_loads(tmp_path: Path) -> None:
    """The ledger counts rows from the files' footers: no helper column can collide with a source column."""
    resolved = write_spec(tmp_path, [*COLUMNS, "{name: filename, type: text}"])
    write_file(resolved, "clients/date=2026-11-23/clients-a.parquet", rows(1, 3, 100, filename="statement.pdf"))
    assert run_load(resolved) == {"files": 1, "rows": 3}
    assert raw(resolved, "SELECT rows FROM raw._bankflow_loaded_files") == [(3,)]
    assert raw(resolved, "SELECT DISTINCT filename FROM raw.clients") == [("statement.pdf",)]
