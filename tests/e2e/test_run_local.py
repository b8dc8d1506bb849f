"""`bankflow run` end to end on the embedded `local` environment: a workload writes the whole time, the run is
killed with -9 at random moments and restarted, and in the end raw and the marts equal the source.

Real parts only: the embedded PostgreSQL, the built-in pgoutput reader, Parquet files, DuckDB and dbt-duckdb;
`bankflow run` and `bankflow generate` are real subprocesses. BANKFLOW_TEST_SEED repeats a run's kill moments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bankflow.cli import main
from tests.fixtures.banking_spec import banking_spec_text

pytestmark = pytest.mark.e2e

TRIALS = 4


def _spec_text() -> str:
    """pipelines/banking.yaml with absolute paths (it lives in a tmp dir here) and a short transform cadence."""
    return banking_spec_text({"transform: {every: 30s, after_changes: 50000}": "transform: {every: 2s}",
                              "metrics: {port: 9464}": "metrics: {port: 0}"})


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """(spec path, state dir, environment for subprocesses); the server and the slot go away afterwards."""
    directory = tmp_path_factory.mktemp("bankflow-run")
    spec = directory / "banking.yaml"
    spec.write_text(_spec_text(), encoding="utf-8")
    state = directory / "state"
    env = {**os.environ, "BANKFLOW_STATE_DIR": str(state)}
    previous = os.environ.get("BANKFLOW_STATE_DIR")
    os.environ["BANKFLOW_STATE_DIR"] = str(state)
    try:
        yield str(spec), state, env
    finally:
        main(["down", str(spec), "--drop-slot", "-q"])
        from bankflow.source.embedded import EmbeddedPostgres

        EmbeddedPostgres(state / "postgres").destroy()
        if previous is None:
            os.environ.pop("BANKFLOW_STATE_DIR", None)
        else:
            os.environ["BANKFLOW_STATE_DIR"] = previous


def _bankflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "bankflow", *args]


def _start_run(spec: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(_bankflow("run", spec, "-q"), env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _state(state: Path) -> dict:
    try:
        return json.loads((state / "run_state.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise AssertionError(f"bankflow run exited with {proc.returncode} while waiting for {what}:\n{tail}")
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def _raw_duplicates_and_counts(state: Path) -> tuple[int, dict[str, int]]:
    import duckdb

    con = duckdb.connect(str(state / "warehouse.duckdb"), read_only=True)
    try:
        duplicates = 0
        counts = {}
        for table in ("customers", "accounts", "transactions"):
            duplicates += con.execute(f"select count(*) from (select id, _lsn, _op from raw.{table} "
                                      "group by all having count(*) > 1)").fetchone()[0]
            counts[table] = con.execute(f"select count(distinct id) from raw.{table}").fetchone()[0]
        return duplicates, counts
    finally:
        con.close()


def _metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_run_survives_kill_9_while_the_source_is_written(pipeline: tuple[str, Path, dict[str, str]]) -> None:
    spec, state, env = pipeline
    seed = int(os.environ.get("BANKFLOW_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"BANKFLOW_TEST_SEED={seed}")
    log = state.parent / "run.log"
    assert main(["generate", spec, "-q"]) == 0  # a first day of data: the initial snapshot has rows
    workload = subprocess.Popen(_bankflow("generate", spec, "--rate", "40", "--duration", "60", "-q"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for trial in range(TRIALS):
            proc = _start_run(spec, env, log)
            loads_before = (_state(state).get("last_successful_load_at") or "")
            try:
                def loaded(before: str = loads_before, pid: int = proc.pid) -> bool:
                    current = _state(state)
                    return current.get("pid") == pid and (current.get("last_successful_load_at") or "") > before

                _wait_for(loaded, 120, f"trial {trial}: a load", proc, log)
                time.sleep(rng.uniform(0.0, 6.0))  # somewhere in a load, a transform or the stream
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        assert workload.wait(180) == 0
    finally:
        if workload.poll() is None:
            workload.kill()
    # The last run: the workload has stopped; it catches up, transforms, and stops on SIGTERM.
    written_until = time.time()
    proc = _start_run(spec, env, log)
    try:
        from bankflow.spec.loader import load_spec
        from bankflow.stages.load import lake_files

        resolved = load_spec(spec)
        seen: list[tuple[int, str | None]] = []

        def marts_current() -> bool:
            """Raw at rest (the run streamed what the stopped workload wrote: the lake's files stopped changing
            for 4 s, and the run's state says the same newest commit) and a transform of this run that went
            well after its last load, over that raw. A transform that finds nothing new is skipped, not run."""
            current = _state(state)
            done = current.get("last_successful_transform_at")
            newest = max((current.get("raw_newest_commit") or {}).values(), default=None)
            files = sum(len(lake_files(resolved, t)) for t in resolved.spec.tables)
            seen.append((files, newest))
            steady = len(seen) >= 9 and len(set(seen[-9:])) == 1 and time.time() >= written_until + 4
            loaded = current.get("last_successful_load_at") or current.get("started_at") or ""
            return (current.get("pid") == proc.pid and steady and current.get("pending_files") == 0
                    and done is not None and newest is not None
                    and done >= (current.get("started_at") or "") and done >= loaded
                    and current.get("marts_as_of") == newest)
        _wait_for(marts_current, 180, "the marts to catch up with the workload", proc, log)
        samples = _samples(_metrics_text(_state(state)["metrics_port"]))
        transforms = samples[("bankflow_stage_runs_total", (("pipeline", "banking"), ("stage", "transform")))]
        assert transforms >= 1
        if _state(state).get("last_successful_load_at"):  # the killed runs may have loaded everything already
            assert samples[("bankflow_rows_total", (("pipeline", "banking"), ("stage", "load"),
                                                    ("table", "transactions")))] > 0
        freshness = samples[("bankflow_raw_freshness_seconds", (("pipeline", "banking"),
                                                                ("table", "transactions")))]
        assert 0 <= freshness < 600
        assert samples[("bankflow_stage_last_success_timestamp_seconds",
                        (("pipeline", "banking"), ("stage", "transform")))] > written_until - 600
        assert any(name == "bankflow_slot_retained_wal_bytes" for name, _ in samples)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert _state(state)["stopped_at"] is not None
    # SIGTERM loaded what the stream flushed on its way out: no lake file is left outside the ledger
    from bankflow.spec.loader import load_spec
    from bankflow.stages.load import pending_files

    assert pending_files(load_spec(spec)) == {"customers": [], "accounts": [], "transactions": []}
    duplicates, counts = _raw_duplicates_and_counts(state)
    assert duplicates == 0
    assert counts["transactions"] > 0
    # Raw and the marts equal the source, on read-only connections (bankflow verify).
    assert main(["verify", spec, "-q"]) == 0
