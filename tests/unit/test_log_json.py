"""`--log-format json`: one JSON object per line on stderr, secrets redacted, no progress status line."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re

import pytest

import bankflow.cli
from bankflow import log as bankflow_log
from bankflow.cli import main
from bankflow.errors import BankflowError
from bankflow.stages.base import Progress, StageResult
from tests.specs.support import BANKING, BANKING_STACK_ENV, MINIMAL, PG_SECRET, set_env

library = logging.getLogger("bankflow.test_log_json")


def objects(err: str) -> list[dict[str, object]]:
    lines = err.splitlines()
    assert lines, "nothing logged"
    assert "\r" not in err
    return [json.loads(line) for line in lines]


def test_every_line_is_a_json_object_with_a_utc_microsecond_timestamp(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    set_env(monkeypatch, BANKING_STACK_ENV)

    def command(args: object) -> int:
        bankflow.cli._load(args)  # type: ignore[arg-type]  # registers the spec's secrets
        library.info("connecting with password %s", PG_SECRET, extra={"table": "accounts", "rows": 3})
        try:
            raise RuntimeError(f"login failed for {PG_SECRET}")
        except RuntimeError:
            library.exception("the source refused")
        display = Progress(True)
        display.update("cdc", "1,000 events", force=True)  # nothing: stderr is a JSON stream
        display.done(StageResult("cdc", events=1000))
        raise BankflowError(f"cannot reach {PG_SECRET}")  # the CLI's own error line

    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)  # where the status line would show
    monkeypatch.setitem(bankflow.cli.COMMANDS, "status", command)
    assert main(["--log-format", "json", "-v", "status", str(BANKING), "--env", "stack"]) == 1
    err = capsys.readouterr().err
    assert PG_SECRET not in err
    records = objects(err)
    assert [(r["level"], r["logger"]) for r in records] == [
        ("info", "bankflow.test_log_json"), ("error", "bankflow.test_log_json"), ("error", "bankflow.cli")]
    info, failure, cli_error = records
    assert info["message"] == "connecting with password ****"
    assert (info["table"], info["rows"]) == ("accounts", 3)  # extra= fields kept, with their JSON types
    assert "exc" not in info
    assert "RuntimeError: login failed for ****" in str(failure["exc"])
    assert cli_error["message"] == "bankflow status: error: cannot reach ****"
    for record in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", str(record["ts"]))
        stamp = dt.datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00"))
        assert abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 60


def test_the_option_after_the_command_and_the_default_level(chatty_validate: None,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(MINIMAL), "--log-format", "json"]) == 0
    records = objects(capsys.readouterr().err)
    assert [r["level"] for r in records] == ["warning", "error"]  # the default level, as in text
    assert main(["validate", str(MINIMAL)]) == 0
    assert capsys.readouterr().err.splitlines()[0] == "warning: a warning record"  # back to text


@pytest.fixture
def chatty_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    def command(args: object) -> int:
        library.info("an info record")
        library.warning("a warning record")
        library.error("an error record")
        return 0

    monkeypatch.setitem(bankflow.cli.COMMANDS, "validate", command)


def test_workers_inherit_the_format(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bankflow_log.configure(1, fmt="json")
    try:
        assert os.environ[bankflow_log.FORMAT_ENV] == "json"
        environment = dict(os.environ)
    finally:
        bankflow_log.reset()
    assert bankflow_log.FORMAT_ENV not in os.environ  # reset() restores the environment
    for name in (bankflow_log.LEVEL_ENV, bankflow_log.FORMAT_ENV):
        monkeypatch.setenv(name, environment[name])  # what a spawned worker process sees
    bankflow_log.configure_worker("worker2")
    try:
        library.info("hello from a worker")
    finally:
        bankflow_log.reset()
    (record,) = objects(capsys.readouterr().err)
    assert record["message"] == "hello from a worker"
    assert record["worker"] == "worker2" and record["pid"] == os.getpid()


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        bankflow_log.configure(fmt="xml")
    with pytest.raises(SystemExit) as exit_info:
        main(["--log-format", "xml", "validate", str(MINIMAL)])
    assert exit_info.value.code == 2
