"""`bankflow run` keeps loading raw while a transform runs, and every transform sees whole source transactions,
on the embedded `local` environment.

Real parts: the embedded PostgreSQL, the built-in pgoutput reader, Parquet, DuckDB and dbt-duckdb, in one
process (`Pipeline.run` on a thread, as the CLI runs it on the main one). The first transform's dbt step is held
at its start, inside the cycle, while this process holds the DuckDB file for dbt: the source is written meanwhile
and the test waits until a load put those rows into raw, with the transform still held. Then it lets the
transform go, waits for a transform after that load, stops the run as a signal would, and checks `verify`.
Before loads had a thread of their own, the load waited for the transform: this test timed out. While the
transform is held, another process cannot open the DuckDB file, and `bankflow query` in one is answered by the run.

The second test writes on four connections at once (transactions held open while others commit; each posts a
leg and its account's balance in one transaction) while `run` loads and transforms every 2 s, and asserts that
no transform failed, the balance reconciliation included: a load takes whole transactions across tables (the
built-in engine's durable cut) and each cycle reads one raw position. Before, a cycle could see a deposit's
balance without its leg, and the reconciliation failed a cycle in ten or so.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("duckdb")
pytest.importorskip("dbt.adapters.duckdb")

from bankflow.pipeline import Pipeline
from bankflow.query import query
from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import load_spec
from tests.fixtures.banking_spec import banking_spec_text
from tests.integration.test_overlapping_transactions import Writer, connect

pytestmark = pytest.mark.integration

@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    """banking.yaml's `local` environment with its state in tmp_path, transforms every 2 s, no metrics port."""
    state = tmp_path / "state"
    text = banking_spec_text({"transform: {every: 30s, after_changes: 50000}": "transform: {every: 2s}",
                              "metrics: {port: 9464}": "metrics: {port: null}"})
    spec = tmp_path / "banking.yaml"
    spec.write_text(text, encoding="utf-8")
    pipe = Pipeline(load_spec(spec, env="local", environ={**os.environ, "BANKFLOW_STATE_DIR": str(state)}))
    try:
        yield pipe
    finally:
        try:
            pipe.down(drop_slot=True)
        finally:
            EmbeddedPostgres(state / "postgres").destroy()


def _state(pipe: Pipeline) -> dict[str, Any]:
    try:
        return json.loads((pipe.resolved.state_dir / "run_state.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _wait(pipe: Pipeline, predicate: Any, timeout: float, what: str, runner: threading.Thread) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert runner.is_alive(), f"the run ended while waiting for {what}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s; run state {_state(pipe)}"
        time.sleep(0.2)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _start_run(pipe: Pipeline, stop: threading.Event) -> tuple[threading.Thread, dict[str, Any]]:
    """`Pipeline.run` on a thread (as the CLI runs it on the main one); its RunOutcome lands in the dict."""
    outcome: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: outcome.update(run=pipe.run(progress=False, stop=stop)),
                              name="test-run", daemon=True)
    runner.start()
    return runner, outcome


def _wait_at_rest_and_transformed(pipe: Pipeline, runner: threading.Thread) -> None:
    """Until the stream's last files are loaded (nothing pending, no new load for 3 s) and a transform that went
    well started after the last load."""
    seen: list[str | None] = []

    def at_rest_and_transformed() -> bool:
        state = _state(pipe)
        seen.append(state.get("last_successful_load_at"))
        done = state.get("last_successful_transform_at")
        return (len(seen) >= 15 and len(set(seen[-15:])) == 1 and state.get("pending_files") == 0
                and done is not None and done > (seen[-1] or ""))
    _wait(pipe, at_rest_and_transformed, 180, "raw at rest and a transform after its last load", runner)


def test_loads_go_on_while_a_transform_runs(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    from dbt.cli.main import dbtRunner

    pipeline.generate(progress=False)  # the first day: the snapshot
    held, release = threading.Event(), threading.Event()
    held_at: list[str] = []
    invoke = dbtRunner.invoke

    def invoke_held_once(self: Any, args: list[str], **kwargs: Any) -> Any:
        if args and args[0] != "parse" and not held.is_set():
            held_at.append(_now())
            held.set()  # inside the cycle: this process holds the DuckDB file for dbt
            release.wait(180)
        return invoke(self, args, **kwargs)

    monkeypatch.setattr(dbtRunner, "invoke", invoke_held_once)
    stop = threading.Event()
    runner, outcome = _start_run(pipeline, stop)
    try:
        _wait(pipeline, held.is_set, 180, "the first transform", runner)
        # (the first transform may start before the snapshot's load: raw may still be empty here)
        rows_at_hold = query(pipeline.resolved, "select count(*) from raw.transactions").rows[0][0]
        loads_before = _state(pipeline).get("last_successful_load_at")
        pipeline.generate(rate=20, duration=2, progress=False)  # written while the transform is held

        def loaded_while_held() -> bool:
            state = _state(pipeline)
            last = state.get("last_load") or {}
            return (bool(last.get("ok")) and (last.get("rows") or 0) > 0 and last.get("at", "") > held_at[0]
                    and state.get("last_successful_load_at") != loads_before)
        _wait(pipeline, loaded_while_held, 120, "a load while the transform is held", runner)
        assert not release.is_set() and _state(pipeline).get("last_successful_transform_at") is None
        _query_while_the_run_holds_the_file(pipeline, rows_at_hold)
        release.set()
        _wait_at_rest_and_transformed(pipeline, runner)
    finally:
        release.set()
        stop.set()
        runner.join(180)
    assert not runner.is_alive()
    result = outcome["run"]
    assert result.ok, result.to_dict()
    assert result.loads >= 2 and result.transforms >= 2
    report = pipeline.verify()
    assert report.ok, report.format()
    # the run is gone, and so is its endpoint: a query opens the warehouse read-only itself
    assert not (pipeline.resolved.state_dir / "query_endpoint.json").exists()
    after = query(pipeline.resolved, "select count(*) from raw.transactions")
    assert after.served_by == "warehouse" and after.rows[0][0] > rows_at_hold


def _query_while_the_run_holds_the_file(pipe: Pipeline, rows_at_hold: int) -> None:
    """Another process cannot open the DuckDB file now; `bankflow query` in one is answered by the run, with the
    rows loaded while the transform is held. A write is refused before anything runs."""
    env = {**os.environ, "BANKFLOW_STATE_DIR": str(pipe.resolved.state_dir)}
    spec = str(pipe.resolved.path)
    direct = subprocess.run([sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1], read_only=True)",
                             str(pipe.resolved.resolve_path(pipe.spec.warehouse.path))],
                            capture_output=True, text=True, timeout=60)
    assert direct.returncode != 0 and "lock" in direct.stderr.lower(), direct.stderr
    asked = subprocess.run([sys.executable, "-m", "bankflow", "query", spec, "--env", "local", "--json",
                            "select count(*) as n, sum(amount) as total from raw.transactions"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert answer["served_by"] == "run" and answer["columns"] == ["n", "total"]
    count, total = answer["rows"][0]
    assert count > rows_at_hold
    assert isinstance(total, str) and Decimal(total) == Decimal(total).quantize(Decimal("0.01"))  # exact money
    refused = subprocess.run([sys.executable, "-m", "bankflow", "query", spec, "--env", "local",
                              "delete from raw.transactions"], capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 2 and "query refused" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert query(pipe.resolved, "select count(*) from raw.transactions").rows[0][0] >= count


def test_every_transform_sees_whole_transactions_while_four_connections_write(pipeline: Pipeline) -> None:
    state_dir = pipeline.resolved.state_dir
    pipeline.generate(seed=5, progress=False)
    conn = connect(state_dir)
    with conn.cursor() as cur:
        cur.execute("select id from accounts where status = 'OPEN' order by id")
        accounts = [a for (a,) in cur.fetchall()]
    conn.close()
    stop_run, stop_writers = threading.Event(), threading.Event()
    writers = [Writer(state_dir, accounts[i::4], seed=i, stop=stop_writers) for i in range(4)]
    runner, outcome = _start_run(pipeline, stop_run)
    try:
        _wait(pipeline, lambda: _state(pipeline).get("last_successful_transform_at") is not None, 180,
              "the first transform", runner)
        for writer in writers:
            writer.start()
        time.sleep(25)  # about a dozen transforms while they write
        stop_writers.set()
        for writer in writers:
            writer.join(60)
        _wait_at_rest_and_transformed(pipeline, runner)
    finally:
        stop_writers.set()
        stop_run.set()
        runner.join(180)
    assert all(w.error is None for w in writers), [w.error for w in writers]
    assert sum(w.committed for w in writers) > 200
    assert not runner.is_alive()
    result = outcome["run"]
    assert result.ok, result.to_dict()
    assert result.transforms >= 6, result.to_dict()
    assert result.transform_errors == 0, _state(pipeline).get("last_transform")
    report = pipeline.verify()
    assert report.ok, report.format()
