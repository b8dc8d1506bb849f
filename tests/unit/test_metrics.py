"""The Prometheus endpoint of `bankflow run`: scraped over HTTP, parsed with prometheus_client's own parser."""

from __future__ import annotations

import datetime as dt
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bankflow.errors import BankflowError
from bankflow.metrics import RunMetrics
from bankflow.spec.models import Monitor


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value}, from GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def one(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    key = tuple(sorted({"pipeline": "banking", **labels}.items()))
    assert name in samples, f"{name} not exported: {sorted(samples)}"
    assert key in samples[name], f"{name}{labels} not exported: {list(samples[name])}"
    return samples[name][key]


@pytest.fixture
def metrics() -> Iterator[tuple[RunMetrics, int]]:
    m = RunMetrics("banking", "local")
    port = m.serve("127.0.0.1", 0)
    try:
        yield m, port
    finally:
        m.close()


def test_counters_and_gauges_reach_the_endpoint(metrics: tuple[RunMetrics, int]) -> None:
    m, port = metrics
    assert port > 0
    before = time.time()
    m.stage_finished("load", True, 0.4, rows_by_table={"raw_accounts": 10, "raw_transactions": 250})
    m.stage_finished("load", True, 0.2, rows_by_table={"raw_transactions": 50})
    m.stage_finished("load", False, 1.5, error="connection refused")
    m.stage_finished("transform", False, 3.0, error="dbt failed")
    m.lake_written("transactions", 2, 300, 40_960)
    m.lake_written("transactions", 1, 5, 1_024)
    m.dead_letters({"accounts": 3})
    m.slot("bankflow_banking", 123_456, 0, "reserved", True)
    m.thresholds(Monitor(max_lag_seconds=30, max_dead_letters=5))
    s = scrape(port)

    assert one(s, "bankflow_info", env="local") == 1
    assert one(s, "bankflow_stage_runs_total", stage="load") == 3
    assert one(s, "bankflow_stage_errors_total", stage="load") == 1
    assert one(s, "bankflow_stage_errors_total", stage="transform") == 1
    assert one(s, "bankflow_stage_runs_total", stage="transform") == 1
    assert one(s, "bankflow_stage_duration_seconds_count", stage="load") == 3
    assert one(s, "bankflow_stage_duration_seconds_sum", stage="load") == pytest.approx(2.1)
    assert one(s, "bankflow_rows_total", stage="load", table="raw_transactions") == 300
    assert one(s, "bankflow_rows_total", stage="load", table="raw_accounts") == 10
    assert one(s, "bankflow_events_total", table="transactions") == 305
    assert one(s, "bankflow_lake_files_total", table="transactions") == 3
    assert one(s, "bankflow_lake_bytes_total", table="transactions") == 41_984
    assert before <= one(s, "bankflow_stage_last_success_timestamp_seconds", stage="load") <= time.time()
    assert ("bankflow_stage_last_success_timestamp_seconds"
            not in s or (("pipeline", "banking"), ("stage", "transform")) not in
            s["bankflow_stage_last_success_timestamp_seconds"])  # the transform never succeeded
    assert one(s, "bankflow_dead_letters_pending", table="accounts") == 3
    assert one(s, "bankflow_slot_retained_wal_bytes", slot="bankflow_banking") == 123_456
    assert one(s, "bankflow_lag_bytes", slot="bankflow_banking") == 0
    assert one(s, "bankflow_slot_active", slot="bankflow_banking") == 1
    assert one(s, "bankflow_slot_wal_status", slot="bankflow_banking", wal_status="reserved") == 1
    assert one(s, "bankflow_slot_wal_status", slot="bankflow_banking", wal_status="lost") == 0
    assert one(s, "bankflow_monitor_max_lag_seconds") == 30
    assert one(s, "bankflow_monitor_max_dead_letters") == 5
    assert "bankflow_monitor_max_raw_age_seconds" not in s  # unset: unchecked, not exported as 0
    assert "connection refused" not in m.text()  # error texts are counted, never exported

    m.dead_letters({})  # replayed: the table has none pending any more
    assert "bankflow_dead_letters_pending" not in scrape(port)


def test_freshness_grows_with_time_and_lag_is_zero_without_lag_bytes(metrics: tuple[RunMetrics, int]) -> None:
    m, port = metrics
    now = dt.datetime.now(dt.timezone.utc)
    m.raw_newest_commit("raw_transactions", now - dt.timedelta(seconds=20))
    m.raw_newest_commit("raw_accounts", (now - dt.timedelta(seconds=5)).replace(tzinfo=None))  # naive = UTC
    m.marts_as_of(now - dt.timedelta(seconds=60), ["fact_transactions", "dim_accounts"])
    m.lake_newest_commit(now - dt.timedelta(seconds=90))
    m.slot("bankflow_banking", 2_000_000, 0, "reserved", True)
    first = scrape(port)
    raw = one(first, "bankflow_raw_freshness_seconds", table="raw_transactions")
    assert 20 <= raw < 25
    assert 5 <= one(first, "bankflow_raw_freshness_seconds", table="raw_accounts") < 10
    assert 60 <= one(first, "bankflow_marts_freshness_seconds") < 65
    assert one(first, "bankflow_mart_freshness_seconds", model="fact_transactions") == pytest.approx(
        one(first, "bankflow_mart_freshness_seconds", model="dim_accounts"), abs=0.001)
    assert one(first, "bankflow_lag_seconds") == 0  # the slot has nothing the lake lacks: not behind

    time.sleep(1.1)
    m.slot("bankflow_banking", 2_500_000, 4_096, "reserved", False)  # changes the lake has not read yet
    second = scrape(port)
    assert one(second, "bankflow_raw_freshness_seconds", table="raw_transactions") >= raw + 1
    assert 90 <= one(second, "bankflow_lag_seconds") < 95
    assert one(second, "bankflow_lag_bytes", slot="bankflow_banking") == 4_096
    assert one(second, "bankflow_slot_active", slot="bankflow_banking") == 0

    m.raw_newest_commit("raw_accounts", None)
    assert "raw_accounts" not in m.text()


def test_lost_slot_and_unknown_values(metrics: tuple[RunMetrics, int]) -> None:
    m, port = metrics
    m.slot("bankflow_banking", None, None, "lost", None)
    s = scrape(port)
    assert one(s, "bankflow_slot_wal_status", slot="bankflow_banking", wal_status="lost") == 1
    assert one(s, "bankflow_slot_wal_status", slot="bankflow_banking", wal_status="reserved") == 0
    assert "bankflow_slot_retained_wal_bytes" not in s  # unknown is absent, never a made-up 0
    assert one(s, "bankflow_lag_seconds") == 0


def test_two_pipelines_in_one_process_do_not_collide() -> None:
    a, b = RunMetrics("banking", None), RunMetrics("payments", "stack")
    a.stage_finished("load", True, 0.1)
    assert 'bankflow_stage_runs_total{pipeline="banking",stage="load"} 1.0' in a.text()
    assert "bankflow_stage_runs_total{" not in b.text()
    assert 'env="stack"' in b.text()


def test_a_busy_port_is_a_clear_error(metrics: tuple[RunMetrics, int]) -> None:
    _, port = metrics
    other = RunMetrics("banking", None)
    with pytest.raises(BankflowError, match=r"cannot listen on 127\.0\.0\.1:\d+.*run\.metrics\.port"):
        other.serve("127.0.0.1", port)
    other.close()
