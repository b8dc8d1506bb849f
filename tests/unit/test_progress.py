"""The progress display: percentage and time left where the total is known, and every figure says what it counts."""

from __future__ import annotations

import io
import os

import pytest

import bankflow.stages.base as base
from bankflow.generate.contract import WorkloadOptions
from bankflow.generate.runner import describe, with_totals
from bankflow.stages.base import Progress, StageResult


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(base.time, "monotonic", clock)
    return clock


def test_percentage_and_time_left(clock: Clock) -> None:
    display = Progress(True)
    assert display.describe("generate", "", 0, 1_000_000, "transaction rows") == (
        "0 of 1,000,000 transaction rows (0.0%)")
    clock.now += 10
    assert display.describe("generate", "", 250_000, 1_000_000, "transaction rows") == (
        "250,000 of 1,000,000 transaction rows (25.0%), 30 s left")
    clock.now += 30
    assert display.describe("generate", "x", 500_000, 1_000_000, "transaction rows") == (
        "500,000 of 1,000,000 transaction rows (50.0%), 40 s left; x")
    clock.now += 3600
    assert display.describe("generate", "", 600_000, 1_000_000, "") == "600,000 of 1,000,000 (60.0%), 40 min 27 s left"
    slow = Progress(True)
    slow.describe("cdc", "", 0, 1000)
    clock.now += 3600
    assert slow.describe("cdc", "", 100, 1000) == "100 of 1,000 (10.0%), 9 h 00 min left"


def test_no_total_no_percentage(clock: Clock) -> None:
    display = Progress(True)
    assert display.describe("cdc", "1,000 events", None, None) == "1,000 events"
    assert display.describe("cdc", "1,000 events", 5, 0) == "1,000 events"


def test_a_new_total_starts_a_new_estimate(clock: Clock) -> None:
    display = Progress(True)
    display.describe("cdc", "", 0, 100, "snapshot rows")
    clock.now += 100
    assert display.describe("cdc", "", 10, 1000, "snapshot rows") == "10 of 1,000 snapshot rows (1.0%)"


def test_done_beyond_total_shows_the_total(clock: Clock) -> None:
    display = Progress(True)
    display.describe("cdc", "", 0, 100)
    clock.now += 5
    assert display.describe("cdc", "", 120, 100) == "100 of 100 (100.0%)"


def test_non_tty_lines_are_throttled(clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    display = Progress(True)
    display.update("generate", "a", done=1, total=10)
    clock.now += 1
    display.update("generate", "b", done=2, total=10)  # within 5 s of the last line: dropped
    clock.now += 5
    display.update("generate", "c", done=3, total=10)
    display.update("generate", "d", force=True)
    assert capsys.readouterr().err.splitlines() == [
        "[generate] 1 of 10 (10.0%); a", "[generate] 3 of 10 (30.0%), 21 s left; c", "[generate] d"]


def test_disabled_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    display = Progress(False)
    display.update("cdc", "x", force=True)
    display.done(StageResult("cdc", events=3))
    assert capsys.readouterr() == ("", "")


def test_tty_line_is_cut_to_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setattr(base.shutil, "get_terminal_size", lambda: os.terminal_size((30, 24)))
    Progress(True).update("generate", "x" * 100, force=True)
    assert stream.getvalue() == "\r\033[K[generate] " + "x" * 17 + "…"


def test_tty_rewrites_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    monkeypatch.setattr("sys.stderr", stream)
    display = Progress(True)
    display.update("load", "orders: loading 3 file(s)", force=True)
    display.done(StageResult("load", seconds=1.5, rows=12, files=3))
    assert stream.getvalue() == ("\r\033[K[load] orders: loading 3 file(s)"
                                 "\r\033[K[load     ] ok        1.50s  12 rows  3 files\n")


@pytest.mark.parametrize(("result", "line"), [
    (StageResult("transform", seconds=19.6, rows=98, labels={"rows": "dbt nodes"}),
     "[transform] ok       19.60s  98 dbt nodes"),
    (StageResult("cdc", seconds=2, events=1_204, files=3), "[cdc      ] ok        2.00s  1,204 events  3 files"),
    (StageResult("transform", details={"skipped": "the spec has no transform section"}),
     "[transform] skipped    0.00s  the spec has no transform section"),
    (StageResult("load", ok=False, seconds=0.5, error="boom"), "[load     ] FAILED    0.50s\n            boom"),
], ids=["transform-nodes", "cdc-events", "skipped", "failed"])
def test_done_lines_say_what_they_count(result: StageResult, line: str, capsys: pytest.CaptureFixture[str]) -> None:
    Progress(True).done(result)
    assert capsys.readouterr().err == line + "\n"


def test_transform_counts_dbt_nodes() -> None:
    """The transform stage's result labels its count: nodes dbt ran, not rows."""
    import inspect

    from bankflow.stages import transform

    assert 'labels={"rows": "dbt nodes"}' in inspect.getsource(transform.Transformer)
    assert StageResult("transform", rows=98, labels={"rows": "dbt nodes"}).figures() == ["98 dbt nodes"]
    assert StageResult("x", rows=98).to_dict()["labels"] == {}


def test_generate_reports_its_total() -> None:
    seen: list[dict[str, object]] = []
    bulk = with_totals(WorkloadOptions(transactions=1000), seen.append, "transactions")
    assert bulk is not None
    bulk({"inserted": {"transactions": 250, "accounts": 3}, "updated": {}, "deleted": {}, "db_transactions": 2,
          "seconds": 1.0})
    assert (seen[-1]["done"], seen[-1]["total"], seen[-1]["unit"]) == (250, 1000, "rows in transactions")
    assert seen[-1]["inserted"] == {"transactions": 250, "accounts": 3}  # the running totals, unchanged
    paced = with_totals(WorkloadOptions(rate=10, duration=60), seen.append)
    assert paced is not None
    paced({"inserted": {}, "seconds": 12.7})
    assert (seen[-1]["done"], seen[-1]["total"], seen[-1]["unit"]) == (12, 60, "s")
    once = with_totals(WorkloadOptions(once=True), seen.append)
    assert once is not None
    once({"inserted": {"transactions": 5}})
    assert "total" not in seen[-1]
    assert with_totals(WorkloadOptions(), None) is None
    unknown = with_totals(WorkloadOptions(transactions=1000), seen.append)  # the workload names no table
    assert unknown is not None
    unknown({"inserted": {"transactions": 5}})
    assert "total" not in seen[-1]


def test_generate_progress_text() -> None:
    assert describe({"inserted": {"transactions": 12_000, "accounts": 20}, "updated": {"accounts": 300},
                     "deleted": {}, "db_transactions": 41}) == (
        "12,020 rows inserted, 300 updated in 41 db transactions")
    assert describe({}) == "0 rows inserted"


def test_a_display_that_cannot_write_turns_itself_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """`bankflow apply 2>&1 | head -1`: the display stops; the stage does not fail because of it."""
    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stderr", Closed())
    display = Progress(True)
    display.update("cdc", "x", force=True)
    assert display.enabled is False
    display.done(StageResult("cdc"))  # nothing raised
