"""`bankflow status` checks the spec's `monitor:` thresholds and exits 4 naming the field (issue 15, item 3).

A real local pipeline (built-in CDC from the session's PostgreSQL into a file:// lake and a DuckDB raw), its
status read through the CLI: within thresholds it exits 0; lag seconds, raw age, mart age and dead letters each
breach on their own and are named with the value measured, the threshold and the spec field. Mart age comes from
the state file `bankflow run` writes (`run_state.json`), raw age from the ledger, the last apply and the lake
files raw lacks (an idle source is no breach).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bankflow.cli import main
from bankflow.metrics import probe_slot
from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import load_spec
from tests.fixtures.external import MANAGE_ALL, app_database

pytestmark = pytest.mark.integration

PASSWORD_VAR = "STATUS_THRESHOLDS_PG_PASSWORD"
SPEC = """\
version: 1
name: thresholds
state_dir: state
{source}tables:
  - name: items
    primary_key: [id]
    columns:
      - {{name: id, type: bigint, nullable: false}}
      - {{name: label, type: text, nullable: false}}
      - {{name: price, type: "numeric(12,2)"}}
cdc:
  engine: builtin
  topic_prefix: st_{tag}
  slot: st_{tag}
  publication: st_{tag}
lake:
  url: file://lake
  layout: "{{table}}/date={{date}}"
warehouse:
  type: duckdb
  path: wh.duckdb
transform:
  project_dir: dbt
  steps:
    - {{command: run}}
monitor: {monitor}
"""
APP_DDL = """CREATE SCHEMA shop; CREATE TABLE shop.items (id bigint PRIMARY KEY, label text, price numeric(12,2));
INSERT INTO shop.items VALUES (1, 'one', 1.00), (2, NULL, 2.00), (3, 'three', 3.00)"""
RELAXED = {"max_lag_seconds": 3600, "max_raw_age_seconds": 3600, "max_mart_age_seconds": 3600,
           "max_dead_letters": 5}
STAGES = ["--stages", "source,cdc,load", "-q", "--accept-dead-letters"]


def _now(**delta: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(**delta)).isoformat()


@pytest.fixture
def project(pg_server: EmbeddedPostgres, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Callable[..., str], Any]]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dbt").mkdir()  # a transform is configured (mart age applies) but these tests never run dbt
    (tmp_path / "dbt" / "dbt_project.yml").write_text(
        'name: thresholds\nversion: "1.0.0"\nconfig-version: 2\nprofile: bankflow\n', encoding="utf-8")
    with app_database(pg_server, "st", APP_DDL, monkeypatch, PASSWORD_VAR) as app:

        def write(**monitor: float) -> str:
            path = tmp_path / "pipeline.yaml"
            path.write_text(SPEC.format(source=app.source_yaml("shop", manage=MANAGE_ALL), tag=app.tag,
                                        monitor=json.dumps(RELAXED | monitor)), encoding="utf-8")
            return str(path)

        yield tmp_path, write, app.sql


def write_run_state(root: Path, pid: int, *, transform_ago: float, load_ago: float = 2,
                    stopped: bool = False) -> None:
    """What `bankflow run` writes every cycle (bankflow.runner): here with the last successful transform
    `transform_ago` seconds ago and the last load `load_ago` seconds ago."""
    state = {"pid": pid, "started_at": _now(hours=3), "updated_at": _now(seconds=1),
             "last_load": {"at": _now(seconds=load_ago), "ok": True, "rows": 4, "error": None},
             "last_successful_load_at": _now(seconds=load_ago),
             "last_transform": {"at": _now(seconds=transform_ago), "ok": True, "error": None},
             "last_successful_transform_at": _now(seconds=transform_ago),
             "raw_newest_commit": {"items": _now(seconds=30)}, "lake_newest_commit": _now(seconds=30),
             "marts_as_of": _now(seconds=transform_ago + 1), "stopped_at": _now(seconds=1) if stopped else None}
    (root / "state").mkdir(exist_ok=True)
    (root / "state" / "run_state.json").write_text(json.dumps(state), encoding="utf-8")


def status(spec: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["status", spec, "--json"])
    return code, json.loads(capsys.readouterr().out)


def only_attention(document: dict[str, Any], field: str) -> str:
    """The one attention item of this check, which must name `field`."""
    attention = document["attention"]
    assert len(attention) == 1 and field in attention[0], attention
    return str(attention[0])


def test_status_exits_4_on_each_monitor_threshold(project: Any, capsys: pytest.CaptureFixture[str]) -> None:
    root, write, sql = project
    assert main(["apply", write(), *STAGES]) == 0  # the snapshot: row 2's NULL label is a dead letter
    sql("INSERT INTO shop.items VALUES (4, 'four', 4.00)")
    assert main(["apply", write(), *STAGES]) == 0  # a streamed change: the lake has a real commit time
    write_run_state(root, os.getpid(), transform_ago=60)

    code, document = status(write(), capsys)
    assert code == 0, document["attention"]
    assert document["run"]["running"] is True
    fresh = document["freshness"]
    assert fresh["mart_age_seconds"] == pytest.approx(60, abs=30)
    assert fresh["lake_newest_commit"] is not None and fresh["lake_files_not_loaded"] == 0
    assert fresh["raw_age_seconds"] == 0 if fresh["lag_seconds"] == 0 else fresh["raw_age_seconds"] < 60
    assert document["source"]["slot"]["wal_status"] == "reserved"
    assert document["source"]["slot"]["retained_bytes"] >= document["source"]["slot"]["lag_bytes"] >= 0
    probed = probe_slot(load_spec(write()))  # what `run` exports as metrics: the same slot, the same fields
    assert probed is not None and probed.keys() == document["source"]["slot"].keys()
    assert (probed["name"], probed["wal_status"], probed["active"]) == (document["source"]["slot"]["name"],
                                                                        "reserved", False)
    assert main(["status", write()]) == 0
    text = capsys.readouterr().out
    assert "  run        running (pid" in text and "  freshness  raw " in text, text
    assert "needs attention: nothing" in text

    # dead letters: 1 pending is within max_dead_letters 5, over 0
    code, document = status(write(max_dead_letters=0), capsys)
    assert code == 4
    assert only_attention(document, "monitor.max_dead_letters 0").startswith("1 dead letter(s) pending (items 1)")

    # mart age: run_state.json says the last transform was an hour ago
    write_run_state(root, os.getpid(), transform_ago=3700)
    code, document = status(write(), capsys)
    assert code == 4
    item = only_attention(document, "monitor.max_mart_age_seconds 3600")
    assert item.startswith("the marts were last built 3,70") and "1.0 h" in item, item
    write_run_state(root, os.getpid(), transform_ago=60)

    # lag: a change the lake has not read (the slot has unread WAL) and the lake's newest commit is > 1 s old
    sql("INSERT INTO shop.items VALUES (5, 'five', 5.00)")
    time.sleep(1.2)
    code, document = status(write(max_lag_seconds=1), capsys)
    assert code == 4
    assert document["source"]["slot"]["lag_bytes"] > 0
    only_attention(document, "over monitor.max_lag_seconds 1")
    assert document["freshness"]["lag_seconds"] > 1

    # raw age without a run (no run_state.json): the ledger's and the last apply's time
    (root / "state" / "run_state.json").unlink()
    assert main(["apply", write(), *STAGES]) == 0  # reads row 5
    code, document = status(write(), capsys)
    assert document["run"] is None and code == 4
    # no run_state.json and no transform in the last apply: the marts were never built
    only_attention(document, "the marts were never built successfully (monitor.max_mart_age_seconds 3600)")

    # an idle source is not stale raw: every lake file is loaded and the slot has nothing unread, so a last
    # load long ago (a stopped run's, 2 h) is no breach
    write_run_state(root, os.getpid(), transform_ago=60, load_ago=7200, stopped=True)
    time.sleep(1.5)  # the ledger's and the last apply's load are over a second old too
    assert main(["apply", write(), "--stages", "source,cdc", "-q"]) == 0  # nothing new: the slot is read up
    code, document = status(write(max_raw_age_seconds=1), capsys)
    assert document["run"]["running"] is False and document["warnings"] == []  # stopped cleanly
    fresh = document["freshness"]
    assert fresh["lake_files_not_loaded"] == 0, fresh
    if fresh["lag_seconds"] == 0:
        assert fresh["raw_age_seconds"] == 0 and code == 0, document["attention"]
    else:  # the server wrote WAL of its own since (a standby snapshot record): raw is behind at most that much
        assert fresh["raw_age_seconds"] <= fresh["lag_seconds"], fresh

    # a change in the lake that raw lacks (the stream ran, the load did not): raw is behind since its commit
    sql("INSERT INTO shop.items VALUES (6, 'six', 6.00)")
    assert main(["apply", write(), "--stages", "source,cdc", "-q"]) == 0
    code, document = status(write(max_raw_age_seconds=30), capsys)
    assert code == 0, document["attention"]
    assert document["freshness"]["lake_files_not_loaded"] == 1 and document["freshness"]["raw_age_seconds"] < 30
    time.sleep(1.5)
    code, document = status(write(max_raw_age_seconds=1), capsys)
    assert code == 4
    item = only_attention(document, "over monitor.max_raw_age_seconds 1")
    assert item.startswith("raw is ") and "1 lake file(s) not loaded yet" in item, item
    assert main(["apply", write(), *STAGES]) == 0
    code, document = status(write(max_raw_age_seconds=1), capsys)
    assert document["freshness"]["lake_files_not_loaded"] == 0
    assert code == 0 or document["freshness"]["lag_seconds"], document["attention"]


def test_a_run_that_died_is_a_warning(project: Any, capsys: pytest.CaptureFixture[str]) -> None:
    root, write, _ = project
    spec = write()
    assert main(["apply", spec, *STAGES]) == 0
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    write_run_state(root, int(gone.stdout), transform_ago=10)
    code, document = status(spec, capsys)
    assert code == 0, document["attention"]  # the thresholds decide; a dead run alone is not attention
    assert document["run"]["running"] is False
    assert any("is gone without stopping cleanly" in w for w in document["warnings"]), document["warnings"]
    assert main(["status", spec]) == 0
    assert "  run        not running (pid" in capsys.readouterr().out
