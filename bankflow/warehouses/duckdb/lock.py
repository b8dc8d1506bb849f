"""DuckDB's file lock: wait politely for another process that holds the warehouse file, then fail clearly.

DuckDB lets one process open a database file read-write, or any number of processes open it read-only, never
both. A person's read-only session (the DuckDB CLI, a notebook) therefore blocks bankflow's load and transform,
and bankflow's open connection blocks the person. bankflow holds the file only while it loads or transforms, and
when another process holds it, retries with a growing pause up to a bound (the warehouse's `lock_wait_seconds`,
60 s by default): one warning naming the process (DuckDB's message carries its PID), then a StageError that
says which process holds the file and how to read the warehouse without blocking bankflow.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bankflow.errors import StageError

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec

log = logging.getLogger(__name__)

DEFAULT_WAIT_SECONDS = 60.0
FIRST_PAUSE = 0.1
LONGEST_PAUSE = 2.0
# DuckDB 1.x/2.x: 'IO Error: Could not set lock on file "…": Conflicting lock is held in /usr/bin/python3
# (PID 4242) by user ann. See also https://duckdb.org/docs/…'
_LOCK_TEXT = "could not set lock on file"
_HOLDER_RE = re.compile(r"Conflicting lock is held in (?P<exe>.+?) \(PID (?P<pid>\d+)\)(?: by user (?P<user>\S+?))?"
                        r"(?:\.\s|\.?$)")

HOW_TO_READ = ("To read the warehouse while bankflow runs, use `bankflow query SPEC SQL` (a running `bankflow run` "
               "answers it) or short read-only connections: duckdb.connect(path, read_only=True), closed after "
               "each query, rather than a session kept open.")

T = TypeVar("T")


def is_lock_conflict(exc: BaseException) -> bool:
    """True for DuckDB's "another process holds this file" error (whatever wrapped it, e.g. dbt's)."""
    text = str(exc).lower()
    return _LOCK_TEXT in text and "conflicting lock" in text


def holder(message: str) -> str:
    """Who holds the file, from DuckDB's message: "PID 4242 (/usr/bin/python3, user ann)"."""
    match = _HOLDER_RE.search(message)
    if not match:
        return "another process"
    extra = ", ".join(x for x in (match["exe"], f"user {match['user']}" if match["user"] else "") if x)
    return f"PID {match['pid']} ({extra})"


def holder_pid(message: str) -> int | None:
    match = _HOLDER_RE.search(message)
    return int(match["pid"]) if match else None


def wait_seconds(resolved: ResolvedSpec | None) -> float:
    """The bound from the spec's warehouse (`lock_wait_seconds`), else the default."""
    value = getattr(resolved.spec.warehouse, "lock_wait_seconds", None) if resolved is not None else None
    return DEFAULT_WAIT_SECONDS if value is None else float(value)


def retry_locked(attempt: Callable[[], T], path: Path | str, *, what: str,
                 wait: float = DEFAULT_WAIT_SECONDS, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call `attempt` until it does not fail on DuckDB's file lock, pausing 0.1 s, 0.2 s, … 2 s between tries,
    for at most `wait` seconds. Any other error passes through unchanged."""
    deadline = time.monotonic() + wait
    pause = FIRST_PAUSE
    warned: str | None = None
    while True:
        try:
            result = attempt()
        except Exception as exc:
            if not is_lock_conflict(exc):
                raise
            who = holder(str(exc))
            left = deadline - time.monotonic()
            if left <= 0:
                raise StageError(
                    f"{what}: the DuckDB warehouse {path} is held by {who}"
                    f"{f', still after {wait:g} s' if wait > 0 else ''}; close that session and run again. "
                    f"{HOW_TO_READ}") from None
            if warned != who:
                log.warning("%s: the DuckDB warehouse %s is held by %s; waiting up to %g s for it",
                            what, path, who, wait)
                warned = who
            sleep(min(pause, left))
            pause = min(pause * 2, LONGEST_PAUSE)
            continue
        if warned:
            log.info("%s: the DuckDB warehouse %s is free again", what, path)
        return result


def connect(path: Path | str, *, read_only: bool = False, what: str = "bankflow",
            wait: float = DEFAULT_WAIT_SECONDS, **kwargs: Any) -> Any:
    """duckdb.connect(path, read_only=…), waiting for another process's lock on the file (see retry_locked)."""
    import duckdb

    return retry_locked(lambda: duckdb.connect(str(path), read_only=read_only, **kwargs), path, what=what,
                        wait=wait)


@contextmanager
def holding(path: Path | str, *, what: str, wait: float = DEFAULT_WAIT_SECONDS) -> Iterator[Any]:
    """Hold the file read-write for the block (a connection that waited for the lock), closed afterwards.

    Opened in this process, it makes every other connection to the same file here (dbt-duckdb's) share this
    database, so nothing outside can take the file between two dbt steps of one cycle."""
    con = connect(path, what=what, wait=wait)
    try:
        yield con
    finally:
        con.close()
