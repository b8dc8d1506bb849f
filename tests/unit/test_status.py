"""`status` on the stack engine when Kafka Connect and Kafka are down: one line each, quickly, nothing raised."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bankflow.process import free_port
from bankflow.spec.loader import load_spec
from bankflow.status import collect_status, format_status
from tests.specs.support import MINIMAL, copy_spec


def test_status_says_what_is_unreachable_in_one_line_each(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    closed = free_port("127.0.0.1")  # nothing listens there
    spec = copy_spec(MINIMAL, tmp_path)
    spec.write_text(spec.read_text().replace(
        "  stack:\n    cdc:\n      engine: debezium\n",
        "  stack:\n    cdc:\n      engine: debezium\n"
        f"      connect_url: http://127.0.0.1:{closed}\n"
        f"    kafka: {{bootstrap_servers: '127.0.0.1:{closed}'}}\n"
        f"    source: {{embedded: false, host: 127.0.0.1, port: {closed}}}\n"))
    resolved = load_spec(spec, env="stack")

    started = time.monotonic()
    status = collect_status(resolved)
    assert time.monotonic() - started < 30

    assert "cannot reach Kafka Connect" in status["connector"]["error"]
    assert status["consumer"]["error"].startswith(f"cannot read from Kafka at 127.0.0.1:{closed}")
    assert status["source"]["up"] is False
    assert "Connection refused" in status["source"]["error"] and "\n" not in status["source"]["error"]
    text = format_status(status)
    assert f"connector  bankflow: cannot reach Kafka Connect at http://127.0.0.1:{closed}" in text
    assert f"consumer   group {resolved.spec.kafka.group}: cannot read from Kafka" in text
    assert "%3|" not in capfd.readouterr().err  # librdkafka's own log lines go to logging, not the terminal


def test_status_of_the_builtin_engine_has_no_kafka_sections(tmp_path: Path) -> None:
    status = collect_status(load_spec(copy_spec(MINIMAL, tmp_path)))
    assert "connector" not in status and "consumer" not in status


def test_status_reads_the_last_run_and_says_when_it_cannot(tmp_path: Path) -> None:
    resolved = load_spec(copy_spec(MINIMAL, tmp_path))
    resolved.state_dir.mkdir(parents=True, exist_ok=True)
    last_run = resolved.state_dir / "last_run.json"
    last_run.write_text(json.dumps({"run_id": "r1", "started_at": "2026-01-01T00:00:00Z", "ok": True, "seconds": 3.2,
                                    "stages": [{"name": "cdc", "ok": True, "seconds": 1.23456, "events": 5,
                                                "rows": 5, "files": 1}]}))
    status = collect_status(resolved)
    assert status["last_run"]["stages"] == {"cdc": {"ok": True, "seconds": 1.23, "events": 5, "rows": 5, "files": 1}}
    assert "  last run   2026-01-01T00:00:00Z ok (cdc 1.23s)" in format_status(status)

    last_run.write_text("{not json")
    status = collect_status(resolved)
    assert status["last_run"]["error"].startswith(f"cannot read {last_run}: ")
    assert f"  last run   cannot read {last_run}" in format_status(status)
