"""How bankflow's messages reach a person: the CLI's logging setup and the console the progress display shares.

The library only logs (loggers named `bankflow.*`) and never configures logging; whoever runs it decides how the
messages look. `bankflow` (the CLI) calls `configure()`:

    default   warnings and errors of the library, plus the progress display
    -v        also INFO, every line with a timestamp (and the traceback of an internal error)
    -vv       also DEBUG
    -q        errors only, no progress display
    --log-format json
              one JSON object per line (`ts`, `level`, `logger`, `message`, `exc`, and any `extra=` fields), for
              a log shipper; no progress display (its carriage-return lines would break the stream)

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
FORMAT_ENV = "BANKFLOW_LOG_FORMAT"
FORMATS = ("text", "json")

_secrets: set[str] = set()
_lock = threading.RLock()
_format = "text"  # what configure() chose; "json" turns the progress display off and error_line into JSON


def json_lines() -> bool:
    """Whether stderr is a JSON-lines stream (`--log-format json`): nothing else may write free text to it."""
    return _format == "json"


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
    """Write one line to stderr for the CLI, after clearing an open progress status line (in JSON mode, one
    JSON object of level error, so the stream stays parseable)."""
    with _lock:
        if json_lines():
            record = logging.LogRecord("bankflow.cli", logging.ERROR, __file__, 0, text, None, None)
            print(_JsonFormatter().format(record), file=sys.stderr)
            return
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


# The attributes every LogRecord has: anything else on a record came from `extra={...}` and goes into the object.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                                     "levelname_lower"}


class _JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (ISO-8601 UTC, microseconds), level, logger, message, exc when there is
    one, then the record's `extra` fields. The whole line is redacted, as the text formatter's is."""

    def __init__(self, worker: str | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        import datetime as dt

        ts = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
        document: dict[str, object] = {
            "ts": ts.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if self.worker:
            document |= {"worker": self.worker, "pid": record.process}
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exc"] = record.exc_text
        if record.stack_info:
            document["stack"] = record.stack_info
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in document:
                document[key] = value
        return redact(json.dumps(document, default=str, ensure_ascii=False))


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


# (logger level, propagate, LEVEL_ENV, FORMAT_ENV, format) before configure(), for reset()
_saved: list[tuple[int, bool, str | None, str | None, str]] = []


def configure(verbose: int = 0, quiet: bool = False, *, prefix: str = "", fmt: str = "text",
              worker: str | None = None) -> int:
    """Install bankflow's one handler on the `bankflow` logger (idempotent); return the level chosen.

    `fmt` is "text" (for people) or "json" (one object per line). `reset()` undoes it (the CLI calls both, so
    running `main()` in-process leaves logging as it was).
    """
    global _format
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    level = level_for(verbose, quiet)
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _Handler) for h in logger.handlers):
        _saved.append((logger.level, logger.propagate, os.environ.get(LEVEL_ENV), os.environ.get(FORMAT_ENV),
                       _format))
    _remove_handlers(logger)
    handler = _Handler()
    handler.setFormatter(_JsonFormatter(worker) if fmt == "json"
                         else _Formatter(timestamps=level <= logging.INFO, prefix=prefix))
    logger.addHandler(handler)
    logger.setLevel(level)
    # bankflow's handler writes each record once: a root handler a library installed (logging.basicConfig in
    # dbt, Airflow, a notebook) would print it a second time, in another format
    logger.propagate = False
    _format = fmt
    os.environ[LEVEL_ENV] = logging.getLevelName(level)
    os.environ[FORMAT_ENV] = fmt
    return level


def _remove_handlers(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        if isinstance(handler, _Handler):
            logger.removeHandler(handler)


def reset() -> None:
    """Remove bankflow's handler and restore the logger level, format and environment configure() changed."""
    global _format
    logger = logging.getLogger(LOGGER)
    _remove_handlers(logger)
    _secrets.clear()
    Console.status_line_open = False
    if _saved:
        level, propagate, level_env, format_env, _format = _saved.pop()
        _saved.clear()
        logger.setLevel(level)
        logger.propagate = propagate
        for name, value in ((LEVEL_ENV, level_env), (FORMAT_ENV, format_env)):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def configure_worker(name: str) -> None:
    """In a process bankflow spawned: the same handler, level and format as the parent CLI's, lines prefixed
    by `name` (in JSON, `worker` and `pid` fields).

    A library user's own process (no `BANKFLOW_LOG_LEVEL` in the environment) is left alone.
    """
    level = os.environ.get(LEVEL_ENV)
    if not level:
        return
    numeric = logging.getLevelName(level)
    if not isinstance(numeric, int):
        return
    fmt = os.environ.get(FORMAT_ENV) or "text"
    configure(verbose={logging.INFO: 1, logging.DEBUG: 2}.get(numeric, 0), quiet=numeric >= logging.ERROR,
              prefix=f"{name} %(process)d ", fmt=fmt if fmt in FORMATS else "text", worker=name)
