"""What every stage shares: the run context it receives and the result it returns."""

from __future__ import annotations

import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bankflow.log import Console, json_lines, lock

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec

STAGE_ORDER = ("source", "cdc", "load", "transform")


def save_traceback(resolved: ResolvedSpec, name: str) -> Path:
    """The exception being handled, redacted, in `<state_dir>/logs/<name>.traceback.txt`: people see one line,
    the trace is kept for whoever debugs it."""
    directory = resolved.state_dir / "logs"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.traceback.txt"
    path.write_text(resolved.redact(traceback.format_exc()), encoding="utf-8")
    return path


@dataclass
class StageResult:
    name: str
    ok: bool = True
    seconds: float = 0.0
    events: int = 0
    rows: int = 0
    files: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # What a count means when its field name does not say it: {"rows": "dbt nodes"} for the transform stage.
    labels: dict[str, str] = field(default_factory=dict)

    def figures(self) -> list[str]:
        """The non-zero counts, each with what it counts: ["1,204 events", "3 files"]."""
        return [f"{getattr(self, name):,} {self.labels.get(name, name)}"
                for name in ("events", "rows", "files") if getattr(self, name)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "<1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """One status line per stage on stderr, rewritten in place on a terminal, throttled otherwise.

    `update(stage, message, done=…, total=…, unit=…)`: when the total is known (a bulk generate, a snapshot
    whose row counts were estimated), the line first says how far along it is and the time left, e.g.
    `[generate] 250,000 of 1,000,000 rows in transactions (25.0%), 48 s left; 251,210 rows inserted`.
    On a terminal the line is cut to its width; log records (bankflow.log) clear it before they are written,
    so the two never mix.
    """

    def __init__(self, enabled: bool = True, interval: float = 0.5):
        self.enabled = enabled
        self._tty = sys.stderr.isatty()
        self.interval = interval if self._tty else 5.0
        self._last = 0.0
        self._phase: dict[str, tuple[int, float, int]] = {}  # stage -> (total, started, done at start)

    def describe(self, stage: str, message: str, done: int | None, total: int | None, unit: str = "") -> str:
        """The status text: `message`, then `done of total unit (pct%), time left` when the total is known."""
        if done is None or not total or total <= 0:
            return message
        now = time.monotonic()
        known = self._phase.get(stage)
        if known is None or known[0] != total or done < known[2]:
            known = self._phase[stage] = (total, now, done)
        _, started, first = known
        shown = min(done, total)
        text = f"{shown:,} of {total:,}" + (f" {unit}" if unit else "") + f" ({100.0 * shown / total:.1f}%)"
        elapsed = now - started
        if done > first and elapsed >= 1.0 and done < total:
            text += f", {_duration((total - done) * elapsed / (done - first))} left"
        return f"{text}; {message}" if message else text

    def update(self, stage: str, message: str, *, done: int | None = None, total: int | None = None,
               unit: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        text = self.describe(stage, message, done, total, unit)
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self._tty:  # one terminal row: a wrapped line could not be rewritten in place
            width = shutil.get_terminal_size().columns - 1
            line = f"[{stage}] {text}"
            self._write("\r\033[K" + (line if len(line) <= width else line[: max(width - 1, 0)] + "…"), open_line=True)
        else:
            self._write(f"[{stage}] {text}\n")

    def _write(self, text: str, *, open_line: bool = False, clear: bool = False) -> None:
        """A display that cannot be written (stderr closed, `2>&1 | head`) turns itself off; the run goes on.
        With `--log-format json` it writes nothing: stderr is a stream of JSON lines."""
        if json_lines():
            return
        with lock():
            try:
                if clear:
                    Console.clear_status_line(sys.stderr)
                sys.stderr.write(text)
                sys.stderr.flush()
            except (OSError, ValueError):
                self.enabled = False
                return
            Console.status_line_open = open_line

    def done(self, result: StageResult) -> None:
        self._phase.pop(result.name, None)
        if not self.enabled:
            return
        skipped = result.details.get("skipped") if result.ok else None
        state = "skipped" if skipped else "ok" if result.ok else "FAILED"
        parts = [f"{result.seconds:7.2f}s", *result.figures()]
        if skipped:
            parts.append(str(skipped))
        text = f"[{result.name:<9}] {state:<6} {'  '.join(parts)}\n"
        self._write(text + (f"            {result.error}\n" if result.error else ""), clear=True)


@dataclass
class RunContext:
    """Everything a stage needs: the spec, the source connection, a stop flag and the progress display."""

    resolved: ResolvedSpec
    progress: Progress
    follow: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    workers: int = 1  # consumer processes of a follow run on Kafka (`bankflow run --workers N`)
    # Called by an engine that `reports_durable_position` (the built-in one) with the LSN before which every
    # change of every table is in durable lake files, whenever it moves (`bankflow run` loads whole transactions)
    on_durable: Callable[[int], None] | None = None
    _source_kwargs: dict[str, Any] | None = None

    def source_connect_kwargs(self) -> dict[str, Any]:
        """psycopg2 connect kwargs for the source; starts the embedded server when the spec says so."""
        if self._source_kwargs is None:
            from bankflow.source import source_connect_kwargs

            self._source_kwargs = source_connect_kwargs(self.resolved, start=True)
        return dict(self._source_kwargs)
