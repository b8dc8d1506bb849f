"""What every stage shares: the run context it receives and the result it returns."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec

STAGE_ORDER = ("source", "cdc", "load", "transform")


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Progress:
    """One status line per stage on stderr, rewritten in place on a terminal, throttled otherwise."""

    def __init__(self, enabled: bool = True, interval: float = 0.5):
        self.enabled = enabled
        self.interval = interval if sys.stderr.isatty() else 5.0
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def update(self, stage: str, message: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self._tty:
            sys.stderr.write(f"\r\033[K[{stage}] {message}")
        else:
            sys.stderr.write(f"[{stage}] {message}\n")
        sys.stderr.flush()

    def done(self, result: StageResult) -> None:
        if not self.enabled:
            return
        if self._tty:
            sys.stderr.write("\r\033[K")
        state = "ok" if result.ok else "FAILED"
        parts = [f"{result.seconds:7.2f}s"]
        if result.events:
            parts.append(f"{result.events:,} events")
        if result.rows:
            parts.append(f"{result.rows:,} rows")
        if result.files:
            parts.append(f"{result.files:,} files")
        sys.stderr.write(f"[{result.name:<9}] {state:<6} {'  '.join(parts)}\n")
        if result.error:
            sys.stderr.write(f"            {result.error}\n")
        sys.stderr.flush()


@dataclass
class RunContext:
    """Everything a stage needs: the spec, the source connection, a stop flag and the progress display."""

    resolved: ResolvedSpec
    progress: Progress
    follow: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    _source_kwargs: dict[str, Any] | None = None

    def source_connect_kwargs(self) -> dict[str, Any]:
        """psycopg2 connect kwargs for the source; starts the embedded server when the spec says so."""
        if self._source_kwargs is None:
            from bankflow.stages.source import source_connect_kwargs

            self._source_kwargs = source_connect_kwargs(self.resolved, start=True)
        return dict(self._source_kwargs)
