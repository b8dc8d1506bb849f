"""`validate` and `plan --offline` work without the environment's secrets (CI); `apply` and every command that
contacts a service still refuse. An unset variable is a visible placeholder, never a value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bankflow.cli import main
from bankflow.errors import BankflowError, SpecError
from bankflow.pipeline import Pipeline
from bankflow.spec.loader import load_spec
from tests.specs.support import BANKING, BANKING_STACK_ENV, MINIMAL, REPO, copy_spec

# What the stack environment of pipelines/banking.yaml cannot do without: every ${VAR} there without a default.
REQUIRED = ["PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SNOWFLAKE_ACCOUNT", "SNOWFLAKE_USER"]
FIELDS = {"PGPASSWORD": "source.password", "AWS_ACCESS_KEY_ID": "lake.s3_key",
          "AWS_SECRET_ACCESS_KEY": "lake.s3_secret", "SNOWFLAKE_ACCOUNT": "warehouse.account",
          "SNOWFLAKE_USER": "warehouse.user"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*BANKING_STACK_ENV, "BANKFLOW_STATE_DIR", "BANKFLOW_DEBUG"]:
        monkeypatch.delenv(name, raising=False)


def test_validate_stack_with_a_clean_environment() -> None:
    """The real command with nothing but PATH and HOME: exit 0, one note per unset variable."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "bankflow", "validate", "pipelines/banking.yaml", "--env", "stack"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    notes = result.stderr.splitlines()
    assert len(notes) == len(REQUIRED), result.stderr
    for name, line in zip(REQUIRED, notes, strict=True):
        assert line.startswith("pipelines/banking.yaml:"), line
        assert f": note: environment variable {name} is not set: apply needs it (" in line
    assert "source.password, line " in notes[0]
    assert result.stdout == f"pipelines/banking.yaml: valid (5 note(s); apply needs {', '.join(REQUIRED)})\n"
    assert "Traceback" not in result.stderr


def test_validate_stack_json_includes_the_notes(clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(BANKING), "--env", "stack", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True
    (entry,) = report["files"]
    assert entry["unset_variables"] == REQUIRED
    notes = [i for i in entry["issues"] if i["severity"] == "note"]
    assert [n["message"].split()[2] for n in notes] == REQUIRED
    assert notes[0]["line"] is not None


def test_validate_stack_github_notices(clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(BANKING), "--env", "stack", "--format", "github"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(REQUIRED)
    assert all(line.startswith(f"::notice file={BANKING},line=") for line in lines), lines


def test_validate_quiet_prints_no_notes(clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-q", str(BANKING), "--env", "stack"]) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("command", [["apply"], ["generate"], ["verify"], ["status"], ["consume"], ["down"],
                                     ["plan"]], ids=lambda c: c[0])
def test_commands_that_contact_services_still_refuse(command: list[str], clean_env: None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, str(BANKING), "--env", "stack"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    for name in REQUIRED:
        assert f": error: {FIELDS[name]}: environment variable {name} is not set (hint: export {name}=" in err
    assert "note:" not in err
    assert len(err.splitlines()) == len(REQUIRED)


def test_plan_offline_renders_references(clean_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = copy_spec(BANKING, tmp_path)
    out = tmp_path / "plan"
    code = main(["plan", str(spec), "--env", "stack", "--offline", "--out", str(out)])
    assert code in (0, 3)
    printed = capsys.readouterr().out
    for name in REQUIRED:
        assert f"  note       environment variable {name} is not set: apply needs it" in printed
    connector = json.loads((out / "debezium" / "connector.json").read_text(encoding="utf-8"))
    assert connector["config"]["database.password"] == "${env:PGPASSWORD}"
    profile = (out / "dbt" / "profiles.yml").read_text(encoding="utf-8")
    assert "account: \"{{ env_var('SNOWFLAKE_ACCOUNT') }}\"" in profile
    assert "user: \"{{ env_var('SNOWFLAKE_USER') }}\"" in profile
    setup = (out / "warehouse" / "snowflake" / "setup.sql").read_text(encoding="utf-8")
    assert "${AWS_ACCESS_KEY_ID}" not in setup  # credentials are shown redacted, placeholder or not


def test_plan_offline_json_lists_the_unset_variables(clean_env: None, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    spec = copy_spec(BANKING, tmp_path)
    assert main(["plan", str(spec), "--env", "stack", "--offline", "--json"]) in (0, 3)
    report = json.loads(capsys.readouterr().out)
    assert report["unset_variables"] == REQUIRED
    assert any("PGPASSWORD is not set" in note for note in report["notes"])


def test_a_placeholder_is_not_a_secret_and_not_runnable() -> None:
    resolved = load_spec(BANKING, env="stack", environ={}, unset="defer")
    assert resolved.unset == tuple(REQUIRED)
    assert resolved.spec.source.password == "${PGPASSWORD}"
    assert "${PGPASSWORD}" not in resolved.secrets
    assert resolved.redact("${PGPASSWORD}") == "${PGPASSWORD}"
    with pytest.raises(BankflowError, match=r"PGPASSWORD, AWS_ACCESS_KEY_ID.* not set"):
        Pipeline(resolved)


def test_set_variables_are_still_secrets_in_defer_mode() -> None:
    environ = {k: v for k, v in BANKING_STACK_ENV.items() if k != "SNOWFLAKE_USER"}
    resolved = load_spec(BANKING, env="stack", environ=environ, unset="defer")
    assert resolved.unset == ("SNOWFLAKE_USER",)
    assert BANKING_STACK_ENV["PGPASSWORD"] in resolved.secrets


def test_error_mode_is_the_default() -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(BANKING, env="stack", environ={})
    assert [i.message for i in caught.value.issues] == [f"environment variable {n} is not set" for n in REQUIRED]


@pytest.mark.parametrize(("old", "new", "field"), [
    ("  database: shop\n", "  database: shop\n  port: ${BANKFLOW_TEST_PORT}\n", "source.port"),
    ("  database: shop\n", "  database: shop\n  sslmode: ${BANKFLOW_TEST_PORT}\n", "source.sslmode"),
    ("  database: shop\n", "  database: ${BANKFLOW_TEST_PORT}\n", "source.database"),
    ("  type: duckdb\n", "  type: ${BANKFLOW_TEST_PORT}\n", "warehouse"),
], ids=["int", "choice", "identifier", "discriminator"])
def test_typed_values_still_need_their_variable(old: str, new: str, field: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    spec = copy_spec(MINIMAL, tmp_path)
    spec.write_text(spec.read_text(encoding="utf-8").replace(old, new, 1), encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_spec(spec, environ={}, unset="defer")
    (issue,) = caught.value.issues  # the error only: no note for the same variable
    assert issue.severity == "error"
    assert issue.field == field
    assert issue.message.startswith("environment variable BANKFLOW_TEST_PORT is not set")
    assert "export BANKFLOW_TEST_PORT=" in issue.hint
    assert main(["validate", str(spec)]) == 1
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_a_default_makes_a_typed_value_fine(tmp_path: Path) -> None:
    spec = copy_spec(MINIMAL, tmp_path)
    spec.write_text(spec.read_text(encoding="utf-8").replace(
        "  database: shop\n", "  database: shop\n  port: ${BANKFLOW_TEST_PORT:-5433}\n"), encoding="utf-8")
    resolved = load_spec(spec, environ={}, unset="defer")
    assert resolved.spec.source.port == 5433
    assert resolved.unset == ()
