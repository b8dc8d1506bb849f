"""`bankflow run` on the stack harness: Debezium on Kafka Connect → Tansu → Parquet on S3 (moto) → DuckDB raw →
dbt, with two consumer processes in one group (`--workers 2`), while a workload writes.

The run keeps raw and the marts current by itself (no apply in between): the test waits until raw is at rest and
the marts were built after the last load, stops the run as a signal would, and checks verify.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bankflow.pipeline import Pipeline
from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import ResolvedSpec, load_spec
from tests.harness.connect import KafkaConnectWorker
from tests.harness.s3 import S3Server
from tests.harness.tansu import TansuBroker
from tests.integration.test_stack_e2e import ENV, Stack, assert_raw_matches_source, fresh_stack

pytestmark = pytest.mark.integration


@pytest.fixture
def stack_spec(tmp_path: Path, pg_server: EmbeddedPostgres, tansu_broker: TansuBroker,
               kafka_connect: KafkaConnectWorker, s3_server: S3Server) -> Iterator[tuple[ResolvedSpec, Stack]]:
    with fresh_stack(tmp_path, pg_server, tansu_broker, kafka_connect, s3_server, "runstack") as (resolved, _sql):
        # a short cadence and small files, so the test sees several loads and transforms in seconds
        text = yaml.safe_load(resolved.path.read_text(encoding="utf-8"))
        text["run"] = {"transform": {"every": "3s"}, "metrics": {"port": None}}
        text["environments"][ENV]["lake"]["flush"] = {"max_rows": 200000, "max_seconds": 0.5}
        resolved.path.write_text(yaml.safe_dump(text, sort_keys=False), encoding="utf-8")
        resolved = load_spec(resolved.path, env=ENV)
        yield resolved, Stack(resolved.path, resolved.spec.source.database, "", pg_server, kafka_connect,
                              pg_server.password)


def _run_state(resolved: ResolvedSpec) -> dict[str, Any]:
    try:
        return json.loads((resolved.state_dir / "run_state.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _marts_current(resolved: ResolvedSpec, seen: list[tuple[int, str | None]], written_until: float) -> bool:
    """Raw at rest and the marts built over it. The workload has stopped; the lake's files and the run's newest
    commit in raw stayed the same for 10 checks a second apart (Debezium, the brokers and two consumer processes
    can trail the source by seconds, and each table's files land on their own); nothing is pending; and a
    transform that went well started after the last load (`marts_as_of` is raw's newest commit when it started).
    The newest commit in any one table is not enough: another table's last files may still be on their way."""
    from bankflow.stages.load import lake_files

    state = _run_state(resolved)
    newest = max((state.get("raw_newest_commit") or {}).values(), default=None)
    seen.append((sum(len(lake_files(resolved, t)) for t in resolved.spec.tables), newest))
    steady = len(seen) >= 10 and len(set(seen[-10:])) == 1 and time.time() >= written_until + 6
    done = state.get("last_successful_transform_at")
    loaded = state.get("last_successful_load_at") or ""
    return (steady and state.get("pending_files") == 0 and newest is not None and done is not None
            and done >= loaded and state.get("marts_as_of") == newest)


def test_run_on_stack_with_two_workers_keeps_raw_and_marts_current(
        stack_spec: tuple[ResolvedSpec, Stack]) -> None:
    resolved, stack = stack_spec
    pipeline = Pipeline(resolved)
    pipeline.generate(progress=False)  # a first day of data before the connector exists: its snapshot
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["run"] = pipeline.run(workers=2, progress=False, metrics_port=None, stop=stop)

    runner = threading.Thread(target=run, name="test-run", daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 180
        while not _run_state(resolved).get("last_successful_load_at"):  # the snapshot is in raw
            assert runner.is_alive(), f"run ended early: {outcome.get('run')}"
            assert time.monotonic() < deadline, f"no load within 180 s: {_run_state(resolved)}"
            time.sleep(0.5)
        first_loads = _run_state(resolved)["last_successful_load_at"]
        pipeline.generate(rate=10, duration=8, progress=False)  # changes while the run streams
        written_until = time.time()
        seen: list[tuple[int, str | None]] = []
        deadline = time.monotonic() + 240
        while not _marts_current(resolved, seen, written_until):
            assert runner.is_alive(), f"run ended early: {outcome.get('run')}"
            assert time.monotonic() < deadline, f"the marts did not catch up: {_run_state(resolved)}"
            time.sleep(1.0)
    finally:
        stop.set()
        runner.join(120)
    assert not runner.is_alive()
    result = outcome["run"]
    assert result.ok, result.to_dict()
    assert result.cdc is not None and result.cdc.get("workers") == 2
    assert result.loads > 1 and result.transforms >= 1
    assert _run_state(resolved)["last_successful_load_at"] > first_loads
    assert_raw_matches_source(stack, resolved)
    report = pipeline.verify()
    assert report.ok, report.format()
