"""`bankflow query`: values travel exactly, the SQL is checked before anything runs, a run's endpoint answers only
who holds its token and disappears with it, and without a run the warehouse is read directly (a real DuckDB)."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import stat
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bankflow.errors import UsageError
from bankflow.query import ENDPOINT_FILE, QueryResult, QueryServer, jsonable, live_endpoint, query
from bankflow.spec.loader import ResolvedSpec, load_spec

SPEC = Path(__file__).resolve().parents[2] / "pipelines" / "banking.yaml"


@pytest.fixture
def resolved(tmp_path: Path) -> ResolvedSpec:
    return load_spec(SPEC, env="local", environ={**os.environ, "BANKFLOW_STATE_DIR": str(tmp_path)})


def test_values_travel_exactly() -> None:
    moment = dt.datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert jsonable(Decimal("12345678901234567.89")) == "12345678901234567.89"
    assert jsonable(moment) == "2026-03-01T09:30:15.123456+01:00"
    assert jsonable(dt.date(2026, 3, 1)) == "2026-03-01"
    assert jsonable(2**53 - 1) == 2**53 - 1 and jsonable(2**53) == str(2**53) and jsonable(-(2**60)) == str(-(2**60))
    assert jsonable(b"\x00\xff") == "00ff"
    assert jsonable(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert jsonable([Decimal("1.0"), None, True]) == ["1.0", None, True]


def test_the_text_table_lines_up_and_says_when_rows_were_left_out() -> None:
    text = QueryResult(["id", "amount"], [[1, "10.00"], [22, None]], True, "run").format()
    lines = text.splitlines()
    assert lines[0] == "id  amount" and lines[2] == "1   10.00 " and lines[3] == "22  NULL  "
    assert lines[-1] == "(2 rows, the first 2 shown (--limit))"


def _post(endpoint: dict[str, Any], body: dict[str, Any], token: str | None) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(endpoint["host"], endpoint["port"], timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    conn.request("POST", "/query", json.dumps(body).encode(), headers)
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, payload


def test_a_run_endpoint_answers_its_token_holder_only_and_checks_the_sql(resolved: ResolvedSpec) -> None:
    asked: list[tuple[str, int | None]] = []

    def select(statement: str, limit: int | None) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        asked.append((statement, limit))
        return ["n", "total"], [(3, Decimal("10.50"))], False

    server = QueryServer(resolved, select)
    server.start()
    try:
        path = resolved.state_dir / ENDPOINT_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the token is for the pipeline's owner only
        endpoint = live_endpoint(resolved)
        assert endpoint is not None and endpoint["pid"] == os.getpid()
        assert _post(endpoint, {"sql": "select 1"}, None)[0] == 401
        assert _post(endpoint, {"sql": "select 1"}, "wrong-token")[0] == 401
        status, payload = _post(endpoint, {"sql": "drop table raw.transactions"}, endpoint["token"])
        assert status == 400 and "query refused" in payload["error"]
        status, payload = _post(endpoint, {"sql": "select * from read_csv('/etc/passwd')"}, endpoint["token"])
        assert status == 400 and "query refused" in payload["error"]
        assert asked == []  # nothing refused reached the warehouse
        status, payload = _post(endpoint, {"sql": "select count(*) as n from raw.transactions", "limit": 5},
                                endpoint["token"])
        assert status == 200 and payload == {"columns": ["n", "total"], "rows": [[3, "10.50"]], "truncated": False}
        assert len(asked) == 1 and asked[0][1] == 5
        result = query(resolved, "select count(*) as n from raw.transactions")
        assert result.served_by == "run" and result.rows == [[3, "10.50"]]
    finally:
        server.close()
    assert not (resolved.state_dir / ENDPOINT_FILE).exists() and live_endpoint(resolved) is None


def test_an_endpoint_left_by_a_killed_run_is_ignored(resolved: ResolvedSpec) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    resolved.state_dir.mkdir(parents=True, exist_ok=True)
    (resolved.state_dir / ENDPOINT_FILE).write_text(json.dumps(
        {"host": "127.0.0.1", "port": 1, "pid": int(dead.stdout), "token": "x"}), encoding="utf-8")
    assert live_endpoint(resolved) is None


def test_without_a_run_the_warehouse_is_read_directly(resolved: ResolvedSpec) -> None:
    duckdb = pytest.importorskip("duckdb")
    with pytest.raises(Exception, match="does not exist yet"):
        query(resolved, "select 1")
    path = resolved.resolve_path(resolved.spec.warehouse.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    con.execute("create schema raw; create table raw.transactions (id bigint, amount decimal(18,2), "
                "posted_at timestamptz)")
    con.execute("insert into raw.transactions select i, i * 1.25, timestamptz '2026-01-01 00:00:00.000001+00' "
                "from range(1, 6) t(i)")
    con.close()
    result = query(resolved, "select id, amount, posted_at from raw.transactions order by id", limit=3)
    assert result.served_by == "warehouse" and result.columns == ["id", "amount", "posted_at"]
    assert result.rows[0] == [1, "1.25", "2026-01-01T00:00:00.000001+00:00"] and len(result.rows) == 3
    assert result.truncated
    assert len(query(resolved, "select id from raw.transactions", limit=None).rows) == 5
    with pytest.raises(UsageError, match="query refused"):
        query(resolved, "delete from raw.transactions")
    with pytest.raises(UsageError, match="query refused"):
        query(resolved, "select 1; delete from raw.transactions")
    with pytest.raises(UsageError, match="limit -1: give a count of 0 or more"):
        query(resolved, "select id from raw.transactions", limit=-1)


def test_the_command_refuses_a_write_without_a_traceback(resolved: ResolvedSpec, tmp_path: Path) -> None:
    env = {**os.environ, "BANKFLOW_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "bankflow", "query", str(SPEC), "--env", "local",
                           "update raw.transactions set amount = 0"], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "query refused" in done.stderr and "Traceback" not in done.stderr
    helped = subprocess.run([sys.executable, "-m", "bankflow", "query", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "read-only SELECT" in helped.stdout


def test_two_readers_at_once_in_one_process(resolved: ResolvedSpec) -> None:
    """A second read-only open while the first is still open shares its locked-down database (it used to fail:
    the configuration was locked by the first)."""
    duckdb = pytest.importorskip("duckdb")
    path = resolved.resolve_path(resolved.spec.warehouse.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    con.execute("create schema raw; create table raw.transactions as select 1 as id")
    con.close()
    first = resolved.spec.warehouse.connect(resolved, read_only=True)
    assert first is not None
    try:
        assert query(resolved, "select count(*) from raw.transactions").rows == [[1]]
        second = resolved.spec.warehouse.connect(resolved, read_only=True)
        assert second is not None
        assert second.query("SELECT current_setting('enable_external_access')") == [(False,)]
        second.close()
    finally:
        first.close()


def test_a_query_the_run_does_not_answer_in_time_fails_instead_of_reading_again(resolved: ResolvedSpec) -> None:
    import threading

    from bankflow.errors import BankflowError

    release = threading.Event()

    def slow(statement: str, limit: int | None) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        release.wait(10)
        return ["n"], [(1,)], False

    server = QueryServer(resolved, slow)
    server.start()
    try:
        with pytest.raises(BankflowError, match=r"did not answer the query within 0\.5 s"):
            query(resolved, "select 1", timeout=0.5)
    finally:
        release.set()
        server.close()
