"""A DuckDB load from an s3:// lake (moto) fetches the files whole into a temporary directory and reads them
there: every row once, each ledger row with its file's `_file` value, chunks bounded by the scratch bytes (a file
larger than the bound goes alone), the statement spelled with the lake's URLs, and no copy left behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from bankflow.spec.loader import load_spec
from bankflow.stages.load import lake_files
from bankflow.warehouses import connect_warehouse
from bankflow.warehouses.duckdb import adapter as duckdb_adapter
from tests.harness.s3 import S3Server
from tests.harness.tansu import TansuBroker
from tests.integration.test_kafka_consume import lake_rows, make_events, produce, write_spec

pytestmark = pytest.mark.integration


def _scratch_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("bankflow-load-*")}


@pytest.mark.parametrize("scratch_bytes", [duckdb_adapter.SCRATCH_BYTES, 1])
def test_an_s3_load_reads_local_copies_in_bounded_chunks(tmp_path: Path, tansu_broker: TansuBroker,
                                                         s3_server: S3Server, scratch_bytes: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from bankflow.engines.debezium.consumer import consume_to_lake

    path, prefix = write_spec(tmp_path, tansu_broker, s3_server, max_rows=400)
    events = make_events(2000, seed=11)
    produce(tansu_broker, prefix, events)
    resolved = load_spec(path)
    consume_to_lake(resolved)
    in_lake = lake_rows(resolved)
    monkeypatch.setattr(duckdb_adapter, "SCRATCH_BYTES", scratch_bytes)
    before = _scratch_dirs()
    adapter = connect_warehouse(resolved)
    try:
        adapter.setup()
        loaded_rows = 0
        for table in resolved.spec.tables:
            keys = lake_files(resolved, table)
            assert len(keys) >= 2
            outcome = adapter.load_files(table, keys)
            loaded_rows += outcome.rows
            assert outcome.files == len(keys)
            assert all("s3://" in s and "bankflow-load-" not in s for s in outcome.statements)
            # one load statement for all files, or (bound of 1 byte) one per file
            assert len(outcome.statements) == (1 if scratch_bytes > 1 else len(keys))
            ledger = adapter.query("SELECT file_key, rows, load_seq, raw_file FROM raw._bankflow_loaded_files "
                                   "WHERE raw_table = ? ORDER BY file_key", [table.raw_name])
            assert [r[0] for r in ledger] == sorted(keys)
            assert len({r[2] for r in ledger}) == len(outcome.statements)
            by_file = adapter.query(f"SELECT _file, count(*) FROM raw.{table.raw_name} GROUP BY _file")
            assert sorted(by_file) == sorted((r[3], r[1]) for r in ledger)  # raw_file and rows per file exact
            assert all(r[3].endswith(r[0]) and "bankflow-load-" not in r[3] for r in ledger)  # the lake key
        assert loaded_rows == len(in_lake)
    finally:
        adapter.close()
    assert _scratch_dirs() == before  # the copies are gone
