"""`bankflow plan`: writes every artifact, says "no changes" when nothing changed, exits 3 with a diff when the
spec changed, and renders offline when Kafka Connect is unreachable."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

import bankflow.cli
from bankflow.cli import main
from bankflow.plan import APPLIED_DIR, write_files
from bankflow.render import render_all
from bankflow.render.airflow import render_dag
from bankflow.render.warehouse import FILES_PLACEHOLDER
from bankflow.spec.loader import load_spec
from tests.specs.support import (
    BANKING,
    BANKING_STACK_ENV,
    INVENTORY,
    INVENTORY_CLOUD_ENV,
    SECRETS,
    copy_spec,
    set_env,
)

# The local environment runs the built-in engine: no Kafka Connect, so no connector JSON.
DUCKDB_FILES = ["airflow/bankflow_inventory.py", "dbt/profiles.yml", "source/setup.sql", "topology.json",
                "warehouse/duckdb/load.sql", "warehouse/duckdb/setup.sql"]


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    return copy_spec(INVENTORY, tmp_path)


def written(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_plan_writes_then_no_changes_then_differs(inventory: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan"
    argv = ["plan", str(inventory), "--out", str(out), "--offline"]

    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("plan for inventory (environment: local)\n")
    assert "wrote 6 artifact(s)" in first
    assert "change(s)" not in first
    files = written(out)
    assert sorted(files) == DUCKDB_FILES
    resolved = load_spec(inventory, environ={})
    assert files == {**render_all(resolved).files, "airflow/bankflow_inventory.py": render_dag(resolved)}

    assert main(argv) == 0
    second = capsys.readouterr().out
    assert f"no changes against {out}" in second
    assert "~ " not in second

    # Add a column: the raw DDL, the topology and the (embedded) source's setup change; the profile does not.
    text = inventory.read_text(encoding="utf-8")
    anchor = "      - {name: updated_at, type: timestamp without time zone, nullable: false}\n"
    inventory.write_text(text.replace(anchor, anchor + "      - {name: colour, type: varchar(12)}\n"),
                         encoding="utf-8")
    assert main(argv) == 3
    third = capsys.readouterr().out
    assert f"3 change(s) against {out}:" in third
    assert "  ~ warehouse/duckdb/setup.sql" in third and "  ~ topology.json" in third
    assert "  ~ source/setup.sql" in third
    assert "    dbt/profiles.yml" in third
    assert "+++ b/warehouse/duckdb/setup.sql" in third
    assert '+  "colour" VARCHAR,' in third
    assert '+          "name": "colour",' in third
    # The new plan was written: running again is clean.
    assert '"colour" VARCHAR' in (out / "warehouse/duckdb/setup.sql").read_text(encoding="utf-8")
    assert main(argv) == 0
    assert "no changes" in capsys.readouterr().out


def test_plan_json(inventory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan"
    assert main(["plan", str(inventory), "--out", str(out), "--offline", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == DUCKDB_FILES
    assert report["changed"] == [] and report["compared_with"] is None and report["env"] == "local"
    inventory.write_text(inventory.read_text(encoding="utf-8").replace("max_rows: 5000", "max_rows: 6000"),
                         encoding="utf-8")
    assert main(["plan", str(inventory), "--out", str(out), "--offline", "--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["changed"] == ["topology.json"]
    assert report["compared_with"] == str(out)


def test_plan_without_out_compares_with_the_applied_state(inventory: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    resolved = load_spec(inventory, environ={})
    assert main(["plan", str(inventory), "--offline"]) == 0  # nothing applied yet: nothing to compare
    assert "change(s)" not in capsys.readouterr().out
    applied = resolved.state_dir / APPLIED_DIR
    # What apply records: every artifact but the pending-file list (load.sql changes with every run).
    recorded = {n: t for n, t in render_all(resolved).files.items() if not n.endswith("/load.sql")}
    write_files(recorded, applied)
    assert main(["plan", str(inventory), "--offline"]) == 0
    assert f"no changes against {applied}" in capsys.readouterr().out
    (applied / "topology.json").write_text("{}\n", encoding="utf-8")
    assert main(["plan", str(inventory), "--offline"]) == 3
    assert "~ topology.json" in capsys.readouterr().out
    assert (applied / "topology.json").read_text(encoding="utf-8") == "{}\n"  # plan never writes applied state


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_plan_stack_with_connect_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    spec = copy_spec(BANKING, tmp_path)
    port = closed_port()
    set_env(monkeypatch, {**BANKING_STACK_ENV, "CONNECT_URL": f"http://127.0.0.1:{port}"})
    # The lake/warehouse lookup for pending files is not what this test is about (it needs S3 and Snowflake);
    # without it plan shows the placeholder, as it does whenever the lake cannot be listed.
    monkeypatch.setattr(bankflow.cli, "_pending_files", lambda resolved: None)
    out = tmp_path / "plan"
    assert main(["plan", str(spec), "--env", "stack", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    unreachable = [line for line in captured.out.splitlines() if "unreachable" in line]
    assert len(unreachable) == 1, captured.out
    assert f"127.0.0.1:{port}" in unreachable[0] and "rendered offline" in unreachable[0]
    assert "Traceback" not in captured.out + captured.err
    files = written(out)
    assert sorted(files) == ["airflow/bankflow_banking.py", "dbt/profiles.yml", "debezium/connector.json",
                             "source/setup.sql", "topology.json", "warehouse/snowflake/load.sql",
                             "warehouse/snowflake/setup.sql"]
    assert FILES_PLACEHOLDER in files["warehouse/snowflake/load.sql"]
    assert json.loads(files["debezium/connector.json"])["config"]["database.password"] == "${env:PGPASSWORD}"
    for text in [captured.out, captured.err, *files.values()]:
        for secret in SECRETS:
            assert secret not in text


def test_plan_of_an_invalid_spec_exits_1(inventory: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    inventory.write_text(inventory.read_text(encoding="utf-8").replace("type: uuid", "type: guid", 1),
                         encoding="utf-8")
    out = tmp_path / "plan"
    assert main(["plan", str(inventory), "--out", str(out), "--offline"]) == 1
    err = capsys.readouterr().err
    assert f"{inventory}:19:" in err and "unknown column type 'guid'" in err
    assert not out.exists()


def test_switching_environment_in_one_out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Another environment's warehouse SQL is reported once as removed, then gone: the rerun is clean. Files
    in the directory that are not artifacts are neither reported nor touched."""
    spec = copy_spec(INVENTORY, tmp_path)
    set_env(monkeypatch, INVENTORY_CLOUD_ENV)
    out = tmp_path / "plan"
    out.mkdir()
    (out / "NOTES.md").write_text("mine\n", encoding="utf-8")
    assert main(["plan", str(spec), "--out", str(out), "--offline"]) == 0
    assert "change(s)" not in capsys.readouterr().out  # NOTES.md is no earlier plan
    assert main(["plan", str(spec), "--env", "cloud", "--out", str(out), "--offline", "--json"]) == 3
    switched = json.loads(capsys.readouterr().out)
    assert switched["changed"] == ["airflow/bankflow_inventory.py", "dbt/profiles.yml", "debezium/connector.json",
                                   "source/setup.sql", "topology.json", "warehouse/duckdb/load.sql",
                                   "warehouse/duckdb/setup.sql", "warehouse/snowflake/load.sql",
                                   "warehouse/snowflake/setup.sql"]
    assert main(["plan", str(spec), "--env", "cloud", "--out", str(out), "--offline", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["changed"] == [] and report["compared_with"] == str(out)
    assert sorted(written(out)) == ["NOTES.md", "airflow/bankflow_inventory.py", "dbt/profiles.yml",
                                    "debezium/connector.json", "source/setup.sql", "topology.json",
                                    "warehouse/snowflake/load.sql", "warehouse/snowflake/setup.sql"]
