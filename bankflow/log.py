"""How bankflow's messages reach a person: the CLI's logging setup and the console the progress display shares.

The library only logs (loggers named `bankflow.*`) and never configures logging; whoever runs it decides how the
messages look. `bankflow` (the CLI) calls `configure()`:

    default   warnings and errors of the library, plus the progress display
    -v        also INFO, every line with a timestamp (and the traceback of an internal error)
    -vv       also DEBUG
    -q        errors only, no progress display

Every line that leaves through this handler has the spec's secret values redacted (`add_secrets`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterable
from typing import TextIO

LOGGER = "bankflow"
# Passed to processes bankflow spawns (consumer workers), which do not inherit the parent's logging setup.
LEVEL_ENV = "BANKFLOW_LOG_LEVEL"

_secrets: set[str] = set()
_lock = threading.RLock()


class Console:
    """The stderr line the progress display may be rewriting in place (a terminal status line without a
    newline): a log record first clears it, so messages and the status line never mix."""

    status_line_open = False

    @classmethod
    def clear_status_line(cls, stream: TextIO) -> None:
        if cls.status_line_open:
            stream.write("\r\033[K")
            cls.status_line_open = False


def error_line(text: str) -> None:
    """Write one line to stderr for the CLI, after clearing an open progress status line."""
    with _lock:
        Console.clear_status_line(sys.stderr)
        print(text, file=sys.stderr)


def lock() -> threading.RLock:
    """Held while writing to stderr (log records and progress lines from several threads)."""
    return _lock


def add_secrets(values: Iterable[str]) -> None:
    """Values that never leave through bankflow's log handler (the spec's interpolated secrets)."""
    _secrets.update(v for v in values if v)


REDACTED = "****"


def secret_forms(secret: str) -> set[str]:
    """The ways a secret value shows up in text: as written, URL-encoded (a password in a URL or a form) and
    JSON-escaped (a password with a quote or backslash inside a JSON document)."""
    return {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
            urllib.parse.quote(secret, safe="/:"), json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1]}


@functools.lru_cache(maxsize=64)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    forms = sorted({form for secret in secrets if secret for form in secret_forms(secret)}, key=len, reverse=True)
    if not forms:
        return None
    # A whole value only: not preceded or followed by a letter or digit (a secret `ab` is not inside `banking`).
    return re.compile(r"(?<![^\W_])(?:" + "|".join(map(re.escape, forms)) + r")(?![^\W_])")


def redact_values(text: str, secrets: Iterable[str]) -> str:
    """`text` with every whole occurrence of a secret (as written, URL-encoded or JSON-escaped) replaced by ****.

    An occurrence counts when the characters either side are not letters or digits (or it starts or ends the
    text): a short value inside a longer word is a different word, not the secret.
    """
    pattern = _pattern(frozenset(secrets))
    return text if pattern is None else pattern.sub(REDACTED, text)


def redact(text: str) -> str:
    with _lock:
        secrets = frozenset(_secrets)
    return redact_values(text, secrets)


class _Formatter(logging.Formatter):
    def __init__(self, timestamps: bool, prefix: str = ""):
        fmt = ("%(asctime)s.%(msecs)03d %(levelname_lower)s %(name)s: %(message)s" if timestamps
               else "%(levelname_lower)s: %(message)s")
        super().__init__(prefix + fmt, datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.levelname_lower = record.levelname.lower()
        return redact(super().format(record))


class _Handler(logging.StreamHandler):
    """Writes to the current sys.stderr (tests swap it), after clearing an open progress status line."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr)
        with _lock:
            Console.clear_status_line(self.stream)
            super().emit(record)


def level_for(verbose: int, quiet: bool) -> int:
    if quiet:
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


_saved: list[tuple[int, str | None]] = []  # (logger level, LEVEL_ENV) before configure(), for reset()


def configure(verbose: int = 0, quiet: bool = False, *, prefix: str = "") -> int:
    """Install bankflow's one handler on the `bankflow` logger (idempotent); return the level chosen.

    `reset()` undoes it (the CLI calls both, so running `main()` in-process leaves logging as it was).
    """
    level = level_for(verbose, quiet)
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _Handler) for h in logger.handlers):
        _saved.append((logger.level, os.environ.get(LEVEL_ENV)))
    _remove_handlers(logger)
    handler = _Handler()
    handler.setFormatter(_Formatter(timestamps=level <= logging.INFO, prefix=prefix))
    logger.addHandler(handler)
    logger.setLevel(level)
    os.environ[LEVEL_ENV] = logging.getLevelName(level)
    return level


def _remove_handlers(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        if isinstance(handler, _Handler):
            logger.removeHandler(handler)


def reset() -> None:
    """Remove bankflow's handler and restore the logger level and environment configure() changed."""
    logger = logging.getLogger(LOGGER)
    _remove_handlers(logger)
    _secrets.clear()
    Console.status_line_open = False
    if _saved:
        level, env = _saved.pop()
        _saved.clear()
        logger.setLevel(level)
        if env is None:
            os.environ.pop(LEVEL_ENV, None)
        else:
            os.environ[LEVEL_ENV] = env


def configure_worker(name: str) -> None:
    """In a process bankflow spawned: the same handler and level as the parent CLI's, lines prefixed by `name`.

    A library user's own process (no `BANKFLOW_LOG_LEVEL` in the environment) is left alone.
    """
    level = os.environ.get(LEVEL_ENV)
    if not level:
        return
    numeric = logging.getLevelName(level)
    if not isinstance(numeric, int):
        return
    configure(verbose={logging.INFO: 1, logging.DEBUG: 2}.get(numeric, 0), quiet=numeric >= logging.ERROR,
              prefix=f"{name} %(process)d ")
