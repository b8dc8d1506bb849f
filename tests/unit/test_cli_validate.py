"""`bankflow validate`, `schema` and `--help`: fast, light, machine-readable."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bankflow.cli import build_parser, main
from tests.specs.support import BANKING, BANKING_STACK_ENV, INVENTORY, MINIMAL, REPO, SPECS, set_env

HEAVY = ("dbt", "pyarrow", "duckdb", "snowflake", "confluent_kafka", "psycopg2", "s3fs", "fsspec")


def test_validate_banking_is_fast_and_imports_nothing_heavy() -> None:
    code = textwrap.dedent(f"""
        import json, sys, time
        started = time.perf_counter()
        from bankflow.cli import main
        code = main(["validate", {str(BANKING)!r}])
        elapsed = time.perf_counter() - started
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print(json.dumps({{"code": code, "elapsed": elapsed, "heavy": heavy}}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANKFLOW_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\nbankflow validate pipelines/banking.yaml: {report['elapsed']:.3f} s (import + validate)")
    assert report["code"] == 0
    assert report["heavy"] == [], f"validate imported heavy modules: {report['heavy']}"
    assert report["elapsed"] < 2.0
    assert "banking.yaml: valid" in result.stdout


def test_validate_banking_stack_with_its_variables(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    set_env(monkeypatch, BANKING_STACK_ENV)
    assert main(["validate", str(BANKING), "--env", "stack"]) == 0
    assert capsys.readouterr().out.strip() == f"{BANKING}: valid"


def test_validate_several_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(BANKING), str(INVENTORY), str(MINIMAL)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{BANKING}: valid", f"{INVENTORY}: valid", f"{MINIMAL}: valid"]


@pytest.fixture
def bad_and_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Two specs in the current directory: bad.yaml (an ftp:// lake) and warn.yaml (heartbeats off)."""
    shutil.copytree(SPECS / "minimal_dbt", tmp_path / "minimal_dbt")
    text = MINIMAL.read_text(encoding="utf-8")
    (tmp_path / "bad.yaml").write_text(text.replace("url: file://lake", "url: ftp://lake"), encoding="utf-8")
    (tmp_path / "warn.yaml").write_text(text.replace("heartbeat_interval_ms: 5000", "heartbeat_interval_ms: 0"),
                                        encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return "bad.yaml", "warn.yaml"


def test_validate_json(bad_and_warning: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    bad, warn = bad_and_warning
    assert main(["validate", warn, bad, "--json"]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    report = json.loads(out)
    assert report["valid"] is False
    by_file = {f["file"]: f for f in report["files"]}
    assert by_file[warn]["valid"] is True
    assert by_file[bad]["valid"] is False
    (warning,) = by_file[warn]["issues"]
    assert warning == {
        "file": warn, "line": 17, "column": 26, "field": "cdc.heartbeat_interval_ms", "severity": "warning",
        "message": "a replication slot without heartbeats holds WAL while the captured tables are idle",
        "hint": "set heartbeat_interval_ms, e.g. 10000",
    }
    (error,) = by_file[bad]["issues"]
    assert (error["file"], error["line"], error["column"], error["field"], error["severity"]) == (
        bad, 19, 8, "lake.url", "error")
    assert "ftp://lake" in error["message"] and error["hint"]


def test_validate_json_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(MINIMAL), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "valid": True, "files": [{"file": str(MINIMAL), "valid": True, "issues": [], "unset_variables": []}]}


def test_validate_github_format(bad_and_warning: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    bad, warn = bad_and_warning
    assert main(["validate", warn, bad, "--format", "github"]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 2
    annotation = re.compile(r"^::(error|warning) file=([^,]+),line=(\d+),col=(\d+),title=bankflow::(.+)$")
    parsed = [annotation.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m[1], m[2], m[3]) for m in parsed if m] == [("warning", warn, "17"), ("error", bad, "19")]
    assert lines[1].startswith("::error file=bad.yaml,line=19,col=8,title=bankflow::lake.url: lake url 'ftp://lake'")
    assert "(hint: use file://path" in lines[1]


def test_github_format_for_a_yaml_syntax_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    Path("broken.yaml").write_text("name: x\nsource: [\n", encoding="utf-8")
    assert main(["validate", "broken.yaml", "--format", "github"]) == 1
    out = capsys.readouterr().out
    assert re.match(r"^::error file=broken\.yaml,line=3,col=1,title=bankflow::.*YAML syntax error", out), out


def test_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object"
    assert {"version", "name", "source", "tables", "cdc", "kafka", "lake", "warehouse", "transform", "generate",
            "verify", "environments"} <= set(schema["properties"])
    assert {"name", "source", "tables", "lake", "warehouse"} <= set(schema["required"])
    # Aliases as written in YAML (source.schema, not schema_name); unknown keys forbidden for editors too.
    source = schema["$defs"]["PostgresSource"]
    assert "schema" in source["properties"] and "schema_name" not in source["properties"]
    assert source["additionalProperties"] is False
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in _subcommands())],
                         ids=lambda argv: " ".join(argv))
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bankflow")


def test_every_documented_subcommand_exists() -> None:
    assert {"validate", "plan", "schema", "apply"} <= set(_subcommands())


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["validate"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("bankflow validate: error: the following arguments are required: SPEC "
                                       "(see 'bankflow validate --help')\n")
