"""`bankflow query`: one read-only SELECT on the warehouse, answered also while `bankflow run` holds a DuckDB file.

DuckDB lets one process write a database file and refuses readers in other processes meanwhile; a run loads and
transforms most of the time, so a person's read-only connection is mostly refused (and, when it gets in, makes the
run's next load wait). A run on such a warehouse therefore answers queries itself (`QueryServer`): it listens on
127.0.0.1 on a free port and writes the port, its PID and a random token to `<state_dir>/query_endpoint.json`,
readable by its owner only, so only who may read the pipeline's state may ask. Each query runs on a cursor of the
database the run already has open, in a READ ONLY transaction, so it sees the last committed load or transform and
never waits for one. Without a live run (or on a warehouse any number of sessions read, Snowflake) the query opens
the warehouse read-only itself, as `verify` does.

Either way the SQL is judged first by the guard on verify's queries (`bankflow.sqlguard`): exactly one SELECT that
reads tables, no function that reads files or reaches other servers. Values come back JSON-safe and exact: decimals
and 64-bit integers beyond JSON's exact range as text, timestamps in ISO 8601 with their microseconds and zone.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import os
import secrets
import threading
import uuid
from dataclasses import asdict, dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from bankflow.errors import BankflowError, UsageError

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec

log = logging.getLogger(__name__)

ENDPOINT_FILE = "query_endpoint.json"
DEFAULT_LIMIT = 1000
HINT = "a query is one SELECT that only reads the warehouse's tables: remove the part named"
_MAX_BODY = 1_000_000  # bytes of SQL a run accepts in one request
_EXACT_INT = 2**53  # JSON readers take numbers as doubles: larger integers travel as text


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool  # more rows than the limit: the first `limit` are here
    served_by: str  # "run" (the running process answered) or "warehouse" (opened here, read-only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """An aligned text table, for people."""
        cells = [[_text(v) for v in row] for row in self.rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        more = f", the first {len(self.rows)} shown (--limit)" if self.truncated else ""
        lines.append(f"({len(self.rows):,} row{'s' if len(self.rows) != 1 else ''}{more})")
        return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """A warehouse value as JSON carries it without loss."""
    if value is None or isinstance(value, (bool, str, float)):
        return value
    if isinstance(value, int):
        return value if abs(value) < _EXACT_INT else str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def _text(value: Any) -> str:
    return "NULL" if value is None else value if isinstance(value, str) else json.dumps(value)


def checked(resolved: ResolvedSpec, sql: str) -> str:
    """The SQL to run (sqlglot's rendering of the one read-only SELECT), or a UsageError saying what to remove."""
    from bankflow.sqlguard import QueryRefused, checked_query

    dialect = resolved.spec.warehouse.dialect().sqlglot_dialect
    try:
        return checked_query(sql, dialect)
    except QueryRefused as refused:
        raise UsageError(f"query refused: {refused.reason} ({HINT})") from None


def query(resolved: ResolvedSpec, sql: str, *, limit: int | None = DEFAULT_LIMIT, timeout: float = 60.0) -> QueryResult:
    """One read-only SELECT on the spec's warehouse: asked of the live `bankflow run` when one serves queries,
    else run on a read-only connection opened here. `limit` None returns every row."""
    if limit is not None and limit < 0:
        raise UsageError(f"limit {limit}: give a count of 0 or more, or None for every row")
    statement = checked(resolved, sql)
    endpoint = live_endpoint(resolved)
    if endpoint is not None:
        try:
            return _ask(endpoint, sql, limit, timeout)
        except ConnectionError:
            log.info("the run's query endpoint did not answer; reading the warehouse directly")
    return _direct(resolved, statement, limit)


def live_endpoint(resolved: ResolvedSpec) -> dict[str, Any] | None:
    """The running process's endpoint (`ENDPOINT_FILE`), or None when no live run serves queries."""
    path = resolved.state_dir / ENDPOINT_FILE
    try:
        endpoint = json.loads(path.read_text(encoding="utf-8"))
        pid = int(endpoint["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # left behind by a run that was killed
    except PermissionError:
        pass  # alive, another user's: the token decides
    return endpoint


def _ask(endpoint: dict[str, Any], sql: str, limit: int | None, timeout: float) -> QueryResult:
    import http.client

    body = json.dumps({"sql": sql, "limit": limit}).encode()
    conn = http.client.HTTPConnection(str(endpoint["host"]), int(endpoint["port"]), timeout=timeout)
    try:
        conn.request("POST", "/query", body, {"Content-Type": "application/json",
                                              "Authorization": f"Bearer {endpoint['token']}"})
        response = conn.getresponse()
        payload = json.loads(response.read() or b"{}")
    except TimeoutError:
        raise BankflowError(f"the running pipeline did not answer the query within {timeout:g} s") from None
    except (OSError, ValueError) as exc:
        raise ConnectionError(str(exc)) from None  # no run listening (it just stopped): read directly
    finally:
        conn.close()
    if response.status != 200:
        raise BankflowError(f"query failed in the running pipeline: {payload.get('error', response.reason)}")
    return QueryResult(payload["columns"], payload["rows"], bool(payload["truncated"]), "run")


def _direct(resolved: ResolvedSpec, statement: str, limit: int | None) -> QueryResult:
    reader = resolved.spec.warehouse.connect(resolved, read_only=True)
    if reader is None:
        raise BankflowError(f"the {resolved.spec.warehouse.describe()} warehouse does not exist yet: "
                            "run `bankflow apply` or `bankflow run` first")
    try:
        columns, rows, truncated = reader.select(statement, limit)
    except BankflowError:
        raise
    except Exception as exc:
        raise BankflowError(f"query failed: {resolved.redact(str(exc))}") from None
    finally:
        reader.close()
    return QueryResult(columns, [[jsonable(v) for v in row] for row in rows], truncated, "warehouse")


def fetch(cursor: Any, limit: int | None) -> tuple[list[str], list[tuple[Any, ...]], bool]:
    """(column names, at most `limit` rows, whether there were more) from an executed DB-API cursor."""
    columns = [d[0] for d in cursor.description or []]
    if limit is None:
        return columns, [tuple(r) for r in cursor.fetchall()], False
    rows = [tuple(r) for r in cursor.fetchmany(limit + 1)]
    return columns, rows[:limit], len(rows) > limit


class QueryServer:
    """The running process's query endpoint (see the module's docstring). `select(sql, limit)` runs one checked
    statement inside the run; the server only authenticates, parses and checks."""

    def __init__(self, resolved: ResolvedSpec, select: Any) -> None:
        self.resolved = resolved
        self._select = select
        self.token = secrets.token_urlsafe(32)
        self.path = resolved.state_dir / ENDPOINT_FILE
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str = "127.0.0.1") -> int:
        server = ThreadingHTTPServer((host, 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="bankflow-query", daemon=True)
        self._thread.start()
        port = int(server.server_address[1])
        self.resolved.state_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"host": host, "port": port, "pid": os.getpid(), "token": self.token})
        partial = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(partial, self.path)
        return port

    def answer(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            request = json.loads(body)
            sql, limit = request["sql"], request.get("limit")
            if not isinstance(sql, str) or not (limit is None or (isinstance(limit, int) and limit >= 0)):
                raise ValueError("sql must be text and limit a count")
        except (ValueError, KeyError, TypeError) as exc:
            return 400, {"error": f"bad request: {exc}"}
        try:
            statement = checked(self.resolved, sql)
            columns, rows, truncated = self._select(statement, limit)
        except UsageError as exc:
            return 400, {"error": str(exc)}
        except Exception as exc:
            return 422, {"error": self.resolved.redact(f"{type(exc).__name__}: {exc}")}
        return 200, {"columns": columns, "rows": [[jsonable(v) for v in row] for row in rows],
                     "truncated": truncated}

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _handler(owner: QueryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "bankflow-query"

        def do_POST(self) -> None:
            expected = f"Bearer {owner.token}"
            if not hmac.compare_digest(self.headers.get("Authorization", ""), expected):
                self._reply(401, {"error": "not authorised: read the token from the run's query endpoint file"})
                return
            if self.path != "/query":
                self._reply(404, {"error": "POST /query"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                self._reply(413, {"error": "the query is too long"})
                return
            self._reply(*owner.answer(self.rfile.read(length)))

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("query endpoint: " + format, *args)

    return Handler
