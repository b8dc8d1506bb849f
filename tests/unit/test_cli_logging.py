"""-v/--verbose and -q/--quiet on every command; the library logs through `logging`, the CLI decides the look."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import bankflow.cli
from bankflow import log as bankflow_log
from bankflow.cli import build_parser, main
from tests.specs.support import BANKING, BANKING_STACK_ENV, MINIMAL, PG_SECRET, REPO, set_env

library = logging.getLogger("bankflow.test_cli_logging")


@pytest.fixture
def chatty(monkeypatch: pytest.MonkeyPatch) -> None:
    """`validate` replaced by a command that logs one record per level."""
    def command(args: object) -> int:
        library.debug("a debug record")
        library.info("an info record")
        library.warning("a warning record")
        library.error("an error record")
        return 0

    monkeypatch.setitem(bankflow.cli.COMMANDS, "validate", command)


STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


@pytest.mark.parametrize(("argv", "expected"), [
    ([], ["warning: a warning record", "error: an error record"]),
    (["-q"], ["error: an error record"]),
    (["-v"], [rf"{STAMP} info bankflow\.test_cli_logging: an info record",
              rf"{STAMP} warning bankflow\.test_cli_logging: a warning record",
              rf"{STAMP} error bankflow\.test_cli_logging: an error record"]),
    (["-vv"], [rf"{STAMP} debug bankflow\.test_cli_logging: a debug record", rf"{STAMP} info .*an info record",
               rf"{STAMP} warning .*", rf"{STAMP} error .*"]),
    (["-v", "-v"], [rf"{STAMP} debug .*", rf"{STAMP} info .*", rf"{STAMP} warning .*", rf"{STAMP} error .*"]),
    (["--verbose"], [rf"{STAMP} info .*", rf"{STAMP} warning .*", rf"{STAMP} error .*"]),
    (["--quiet"], ["error: an error record"]),
], ids=["default", "quiet", "verbose", "very-verbose", "v-v", "long-verbose", "long-quiet"])
def test_levels(argv: list[str], expected: list[str], chatty: None, capsys: pytest.CaptureFixture[str]) -> None:
    for placed in (["validate", *argv, str(MINIMAL)], [*argv, "validate", str(MINIMAL)]):
        assert main(placed) == 0
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == len(expected), (placed, lines)
        for pattern, line in zip(expected, lines, strict=True):
            assert re.fullmatch(pattern, line), (placed, line)


def test_before_and_after_the_command_add_up(chatty: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-v", "validate", "-v", str(MINIMAL)]) == 0
    assert "debug" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["validate", "plan", "schema", "apply", "generate", "verify", "status", "down",
                                     "consume"])
def test_every_command_has_verbose_and_quiet(command: str) -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    options = {s for a in subparsers.choices[command]._actions for s in a.option_strings}  # type: ignore[attr-defined]
    assert {"-v", "--verbose", "-q", "--quiet"} <= options


def test_main_leaves_logging_as_it_found_it(chatty: None, capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("bankflow")
    before = (logger.level, list(logger.handlers), logger.propagate)
    assert main(["-vv", "validate", str(MINIMAL)]) == 0
    assert (logger.level, list(logger.handlers), logger.propagate) == before
    assert bankflow_log.LEVEL_ENV not in __import__("os").environ


def test_secrets_are_redacted_from_log_records(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    set_env(monkeypatch, BANKING_STACK_ENV)

    def command(args: object) -> int:
        bankflow.cli._load(args)  # type: ignore[arg-type]
        library.warning("connecting with password %s", PG_SECRET)
        return 0

    monkeypatch.setitem(bankflow.cli.COMMANDS, "status", command)
    assert main(["status", str(BANKING), "--env", "stack"]) == 0
    err = capsys.readouterr().err
    assert err == "warning: connecting with password ****\n"


def test_a_log_record_clears_the_progress_status_line(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from bankflow.stages.base import Progress

    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    bankflow_log.configure()
    try:
        display = Progress(True)
        display.update("cdc", "1,000 events", force=True)
        library.warning("careful")
        display.update("cdc", "2,000 events", force=True)
    finally:
        bankflow_log.reset()
    err = capsys.readouterr().err
    assert err == "\r\033[K[cdc] 1,000 events\r\033[Kwarning: careful\n\r\033[K[cdc] 2,000 events"


def test_spawned_workers_get_the_parents_level(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(bankflow_log.LEVEL_ENV, "INFO")
    bankflow_log.configure_worker("worker3")
    try:
        library.info("hello from a worker")
    finally:
        bankflow_log.reset()
    assert re.fullmatch(rf"worker3 \d+ {STAMP} info bankflow\.test_cli_logging: hello from a worker\n",
                        capsys.readouterr().err)


def test_without_the_cli_a_worker_configures_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(bankflow_log.LEVEL_ENV, raising=False)
    bankflow_log.configure_worker("worker0")
    assert not logging.getLogger("bankflow").handlers


def test_the_library_does_not_print_diagnostics() -> None:
    """Messages go through logging; only the CLI and the progress display write to the terminal."""
    allowed = {"bankflow/cli.py", "bankflow/stages/base.py", "bankflow/log.py"}
    offenders = []
    for path in sorted((REPO / "bankflow").rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative in allowed:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\bprint\(|sys\.std(err|out)\.write|basicConfig\(", code):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == []


def test_quiet_apply_shows_no_progress(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """-q reaches the library as progress=False (the same as --json)."""
    import bankflow.pipeline

    seen: dict[str, object] = {}

    def apply(self: object, **kwargs: object) -> object:
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(bankflow.pipeline.Pipeline, "apply", apply)
    assert main(["apply", "-q", str(MINIMAL)]) == 130
    assert seen["progress"] is False
    assert main(["apply", str(MINIMAL), "--stages", "load,transform"]) == 130
    assert seen["progress"] is True and seen["stages"] == ["load", "transform"]


def test_a_root_handler_a_library_installed_does_not_print_records_twice(
        chatty: None, capsys: pytest.CaptureFixture[str]) -> None:
    """dbt, Airflow or a notebook may call logging.basicConfig: the CLI's records still appear once."""
    import io

    seen = io.StringIO()
    root_handler = logging.StreamHandler(seen)
    logging.getLogger().addHandler(root_handler)
    try:
        assert main(["validate", str(MINIMAL)]) == 0
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert "a warning record" in capsys.readouterr().err
    assert seen.getvalue() == ""
    assert logging.getLogger("bankflow").propagate  # a library user's own logging sees bankflow's records again
