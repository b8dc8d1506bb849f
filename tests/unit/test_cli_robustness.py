"""No input a user can give ends in a traceback: each case is one line on stderr naming what is wrong and what to
do, with an exit status other than 0. Anything unforeseen is one line too ("internal error"), its trace in a file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bankflow.cli
from bankflow.cli import main
from tests.specs.support import MINIMAL, REPO, SPECS

BANKFLOW = [sys.executable, "-m", "bankflow"]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of tests/specs/minimal.yaml (spec.yaml) and its dbt project, as the current directory."""
    shutil.copy(MINIMAL, tmp_path / "spec.yaml")
    shutil.copytree(SPECS / "minimal_dbt", tmp_path / "minimal_dbt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BANKFLOW_DEBUG", raising=False)
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")


def one_line(argv: list[str], capsys: pytest.CaptureFixture[str], pattern: str, *, code: int | None = None) -> str:
    """Run the CLI in-process (SystemExit from argparse included); assert one line on stderr matching `pattern`."""
    try:
        status = main(argv)
    except SystemExit as exit_info:
        status = exit_info.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    assert status != 0, (out, err)
    if code is not None:
        assert status == code, err
    assert "Traceback" not in out + err
    assert len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err
    return err.strip()


# ---------------------------------------------------------------- output

def test_schema_into_a_closed_pipe_is_quiet() -> None:
    """`bankflow schema | head -1`: the reader went away; no BrokenPipeError, no message, exit 141."""
    proc = subprocess.Popen([*BANKFLOW, "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the first write: every write fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""


def test_schema_through_head(tmp_path: Path) -> None:
    result = subprocess.run(f"{sys.executable} -m bankflow schema | head -1", shell=True, capture_output=True,
                            text=True, cwd=REPO, timeout=60)
    assert result.stdout == "{\n"
    assert result.stderr == ""


# ---------------------------------------------------------------- the spec file itself

def test_nul_byte_in_the_spec(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(workdir / "spec.yaml", "name: mini", "name: mi\x00ni")
    one_line(["validate", "spec.yaml"], capsys,
             r"^spec\.yaml:3:9: error: the spec contains a NUL byte .*which YAML does not allow \(hint: remove it",
             code=1)


def test_control_character_in_the_spec(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(workdir / "spec.yaml", "name: mini", "name: mi\x07ni")
    one_line(["validate", "spec.yaml"], capsys, r"^spec\.yaml:3:9: error: the spec contains the control character "
             r"#x0007", code=1)


def test_unreadable_spec(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    spec = workdir / "spec.yaml"
    original = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "spec.yaml":
            raise PermissionError(13, "Permission denied", str(self))
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)  # as root, chmod 000 would not stop the read
    one_line(["validate", str(spec)], capsys,
             r"spec\.yaml: error: cannot read the spec file: permission denied \(hint: make it readable", code=1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_spec_for_real(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "spec.yaml").chmod(0)
    one_line(["validate", "spec.yaml"], capsys, r"cannot read the spec file: permission denied", code=1)


def test_directory_as_spec(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_line(["validate", str(workdir)], capsys,
             rf"^{re.escape(str(workdir))}: error: is a directory, not a spec file \(hint: pass a pipeline YAML "
             rf"file, e\.g\. {re.escape(str(workdir / 'spec.yaml'))}\)$", code=1)


@pytest.mark.parametrize(("data", "message"), [
    ("name: café\n".encode("latin-1"), r"^spec\.yaml:1:10: error: the spec file is not UTF-8 text \(byte 0xe9"),
    ("name: x\n".encode("utf-16"), r"^spec\.yaml:1:1: error: the spec file is UTF-16 text \(hint: save it as UTF-8"),
], ids=["latin-1", "utf-16"])
def test_spec_that_is_not_utf8(data: bytes, message: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "spec.yaml").write_bytes(data)
    one_line(["validate", "spec.yaml"], capsys, message, code=1)


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\nwhen: 2024-13-45\n", r"^spec\.yaml:2:7: error: when: cannot read this value: .*\(hint: quote it"),
    ("name: !!int abc\n", r"^spec\.yaml:1:7: error: name: cannot read this value"),
    ("name: !!python/object:os.system x\n", r"^spec\.yaml:1:7: error: name: cannot read this value"),
    ("a: &a [*a]\n", r"^spec\.yaml:1:\d+: error: a(\[0\])?: an alias refers to the value that contains it"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
     r"error: .*the spec expands to more than 100,000 values"),
    ("? [a, b]\n: c\n", r"^spec\.yaml:1:3: error: mapping keys must be plain strings"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", r"^spec\.yaml: error: the spec is nested too deeply"),
    ("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 3000)),
     r"^spec\.yaml: error: the spec is nested too deeply"),
], ids=["bad-date", "bad-int-tag", "python-tag", "recursive-alias", "alias-bomb", "list-as-key", "deep-flow",
        "deep-block"])
def test_yaml_values_that_cannot_be_read(text: str, message: str, workdir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "spec.yaml").write_text(text, encoding="utf-8")
    one_line(["validate", "spec.yaml"], capsys, message, code=1)


def test_dotenv_that_is_not_utf8(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / ".env").write_bytes(b"A=caf\xe9\n")
    one_line(["validate", "spec.yaml"], capsys, r"\.env:1:\d+: error: the \.env file is not UTF-8 text", code=1)


# ---------------------------------------------------------------- the dbt project

@pytest.mark.parametrize("value", ['"models"', "[1, 2]", "{a: b}", '["models", null]'],
                         ids=["string", "ints", "mapping", "null-entry"])
def test_dbt_model_paths_not_a_list_of_strings(value: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(workdir / "minimal_dbt" / "dbt_project.yml", 'model-paths: ["models"]', f"model-paths: {value}")
    err = one_line(["validate", "spec.yaml"], capsys,
                   r"^spec\.yaml:25:\d+: error: transform\.project_dir: cannot read the dbt project: "
                   r"minimal_dbt/dbt_project\.yml: model-paths must be a list of directory names, got .*"
                   r"\(hint: write e\.g\. model-paths: \[\"models\"\]\)$", code=1)
    assert "valid" not in err


def test_dbt_project_yml_is_not_a_mapping(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "minimal_dbt" / "dbt_project.yml").write_text("- a\n- b\n", encoding="utf-8")
    one_line(["validate", "spec.yaml"], capsys, r"minimal_dbt/dbt_project\.yml must be a mapping of keys", code=1)


def test_dbt_model_file_not_utf8(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "minimal_dbt" / "models" / "staging" / "bad.sql").write_bytes(b"select 1 as caf\xe9\n")
    one_line(["validate", "spec.yaml"], capsys,
             r"^spec\.yaml:25:\d+: error: transform\.project_dir: cannot read the dbt project: "
             r"minimal_dbt/models/staging/bad\.sql is not UTF-8 text \(byte 0xe9 at line 1\) "
             r"\(hint: save it as UTF-8", code=1)


def test_dbt_yaml_file_with_a_syntax_error(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "minimal_dbt" / "models" / "staging" / "schema.yml").write_text("models: [\n", encoding="utf-8")
    one_line(["validate", "spec.yaml"], capsys,
             r"cannot read the dbt project: minimal_dbt/models/staging/schema\.yml line 2: YAML error", code=1)


# ---------------------------------------------------------------- local directories

def test_state_dir_is_a_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "state").write_text("not a directory", encoding="utf-8")
    edit(workdir / "spec.yaml", "name: mini\n", "name: mini\nstate_dir: state\n")
    pattern = (rf"^spec\.yaml:4:12: error: state_dir: {re.escape(str(workdir / 'state'))} is a file, not a "
               r"directory \(hint: point state_dir at a directory, or move .* away\)$")
    one_line(["validate", "spec.yaml"], capsys, pattern, code=1)
    one_line(["apply", "spec.yaml"], capsys, pattern, code=1)  # before any service is started
    one_line(["plan", "spec.yaml", "--offline"], capsys, pattern, code=1)


def test_state_dir_under_a_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "state").write_text("not a directory", encoding="utf-8")
    edit(workdir / "spec.yaml", "name: mini\n", "name: mini\nstate_dir: state/deeper\n")
    one_line(["status", "spec.yaml"], capsys,
             r"error: state_dir: .*state/deeper is under .*state, which is a file, not a directory", code=1)


def test_plan_out_is_an_existing_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "plan.txt").write_text("x", encoding="utf-8")
    one_line(["plan", "spec.yaml", "--offline", "--out", "plan.txt"], capsys,
             r"^bankflow plan: error: --out plan\.txt is a file; give a directory to write the artifacts to",
             code=2)
    one_line(["plan", "spec.yaml", "--offline", "--out", "plan.txt/sub"], capsys,
             r"^bankflow plan: error: --out plan\.txt/sub cannot be created: plan\.txt is a file", code=2)


def test_plan_out_cannot_be_written(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import bankflow.plan

    def refuse(files: object, directory: Path) -> None:
        raise PermissionError(13, "Permission denied", str(directory / "topology.json"))

    monkeypatch.setattr(bankflow.plan, "write_files", refuse)
    one_line(["plan", "spec.yaml", "--offline", "--out", "out"], capsys,
             r"^bankflow plan: error: cannot write the plan to out: Permission denied \(give a directory", code=1)


# ---------------------------------------------------------------- options

@pytest.mark.parametrize(("argv", "message"), [
    (["apply", "spec.yaml", "--stages", "bogus"],
     r"^bankflow apply: error: argument --stages: unknown stage\(s\) 'bogus'; give a comma-separated subset of "
     r"source,cdc,load,transform \(see 'bankflow apply --help'\)$"),
    (["apply", "spec.yaml", "--stages", "load,trasnform"], r"unknown stage\(s\) 'trasnform'"),
    (["consume", "spec.yaml", "--workers", "-2"],
     r"^bankflow consume: error: argument --workers: must be greater than 0, got -2 "
     r"\(see 'bankflow consume --help'\)$"),
    (["consume", "spec.yaml", "--workers", "many"], r"argument --workers: expected a whole number, got 'many'"),
    (["generate", "spec.yaml", "--transactions", "-5"],
     r"^bankflow generate: error: argument --transactions: must be greater than 0, got -5"),
    (["generate", "spec.yaml", "--rate", "0", "--duration", "5"], r"argument --rate: must be greater than 0"),
    (["generate", "spec.yaml", "--rate", "5"], r"^bankflow generate: error: --rate needs --duration"),
    (["validate"], r"^bankflow validate: error: the following arguments are required: SPEC"),
    (["bogus"], r"^bankflow: error: argument COMMAND: invalid choice: 'bogus'"),
    (["validate", "-v", "-q", "spec.yaml"], r"^bankflow: error: -v and -q cannot be combined"),
], ids=["stages-bogus", "stages-typo", "workers-negative", "workers-text", "transactions-negative", "rate-zero",
        "rate-without-duration", "no-spec", "no-such-command", "verbose-and-quiet"])
def test_bad_options(argv: list[str], message: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_line(argv, capsys, message, code=2)


def test_bad_options_never_start_a_service(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """generate --transactions -5 is refused before the source (the embedded PostgreSQL) is started."""
    one_line(["generate", "spec.yaml", "--transactions", "-5"], capsys, "must be greater than 0")
    assert not (workdir / ".bankflow").exists()


# ---------------------------------------------------------------- a spec without transform:

def without_transform(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = text.index("transform:\n"), text.index("environments:\n")
    path.write_text(text[:start] + text[end:], encoding="utf-8")


def test_plan_without_transform_renders_no_dbt_profile(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    without_transform(workdir / "spec.yaml")
    assert main(["plan", "spec.yaml", "--offline", "--out", "plan"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "  transform  none (the spec has no transform: section; no dbt profile is rendered)" in out
    assert "dbt/profiles.yml" not in out
    assert not (workdir / "plan" / "dbt").exists()


def test_apply_bookkeeping_without_transform(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The end of an apply (the applied state plan compares with) and the transform stage: a skip with a note."""
    from bankflow.pipeline import Pipeline
    from bankflow.spec.loader import load_spec
    from bankflow.stages import transform
    from bankflow.stages.base import Progress, RunContext

    without_transform(workdir / "spec.yaml")
    resolved = load_spec("spec.yaml")
    Pipeline(resolved)._save_applied()
    applied = sorted(p.relative_to(resolved.state_dir).as_posix() for p in resolved.state_dir.rglob("*.*"))
    assert applied and not any(p.startswith("applied/dbt") for p in applied)
    display = Progress(True)
    result = transform.run(RunContext(resolved, display))
    display.done(result)
    assert result.ok
    assert "[transform] skipped" in capsys.readouterr().err
    assert "the spec has no transform section" in result.details["skipped"]


# ---------------------------------------------------------------- the last resort

@pytest.fixture
def broken_validate(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`validate` fails unexpectedly; with no spec loaded its trace goes to the temp dir, here the test's own."""
    monkeypatch.setattr("tempfile.tempdir", str(workdir))

    def boom(args: object) -> int:
        raise RuntimeError("something\nunexpected")

    monkeypatch.setitem(bankflow.cli.COMMANDS, "validate", boom)


def test_internal_error_is_one_line_with_the_trace_in_a_file(broken_validate: None, workdir: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line(["validate", "spec.yaml"], capsys,
                   r"^bankflow validate: internal error: RuntimeError: something unexpected \(run with -v or "
                   r"BANKFLOW_DEBUG=1 for the traceback; full trace written to .*\.traceback\.txt\)$", code=1)
    trace = Path(err.rsplit("written to ", 1)[1].rstrip(")"))
    assert "Traceback" in trace.read_text(encoding="utf-8")
    trace.unlink()


def test_internal_error_under_the_state_dir(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Once the spec is loaded the trace goes to <state_dir>/logs/, redacted."""
    import bankflow.pipeline

    def boom(self: object, **kwargs: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(bankflow.pipeline.Pipeline, "apply", boom)
    err = one_line(["apply", "spec.yaml"], capsys, r"^bankflow apply: internal error: OSError: disk on fire", code=1)
    assert f"full trace written to {workdir / '.bankflow' / 'logs'}" in err


def test_internal_error_traceback_with_verbose(broken_validate: None, workdir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-v", "spec.yaml"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("bankflow validate: internal error: RuntimeError")


def test_internal_error_traceback_with_verbose_in_json_lines(broken_validate: None, workdir: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """With --log-format json every stderr line stays one JSON object: the trace goes in the record's "exc"."""
    import json

    assert main(["validate", "-v", "--log-format", "json", "spec.yaml"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert any("Traceback (most recent call last)" in line.get("exc", "") for line in lines)
    assert lines[-1]["level"] == "error" and "internal error: RuntimeError" in lines[-1]["message"]


def test_internal_error_raises_with_bankflow_debug(broken_validate: None, workdir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANKFLOW_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something"):
        main(["validate", "spec.yaml"])


def test_the_real_command_in_a_subprocess(workdir: Path) -> None:
    """The cases above through `python -m bankflow`: exit status, one line, no traceback."""
    edit(workdir / "spec.yaml", "name: mini", "name: mi\x00ni")
    for argv in (["validate", "spec.yaml"], ["validate", "."], ["apply", "spec.yaml", "--stages", "x"]):
        result = subprocess.run([*BANKFLOW, *argv], capture_output=True, text=True, cwd=workdir, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode in (1, 2), result
        assert "Traceback" not in result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
