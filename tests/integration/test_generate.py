"""The banking workload against a real PostgreSQL: reproducible, reconciled, and changing rows in every way.

These are the properties the seed generators lacked (SEEDS.md defects 4 and 12): updates and deletes that
actually happen, balances that reconcile with the transactions after every commit, transfers as two legs
in one database transaction, no negative amounts or balances.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bankflow.generate import WorkloadError, WorkloadOptions, WorkloadResult, load_workload, run_workload

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = ROOT / "pipelines" / "workloads" / "banking.py"
DATABASE = "generate_tests"

def source_ddl(schema: str) -> str:
    """The DDL the pipeline's source stage runs for pipelines/banking.yaml, in a schema of the test's own."""
    import dataclasses

    from bankflow.source.ddl import source_statements
    from bankflow.spec.loader import load_spec

    resolved = load_spec(ROOT / "pipelines" / "banking.yaml", environ={}, check_dbt=False)
    spec = resolved.spec.model_copy(update={"source": resolved.spec.source.model_copy(update={"schema_name": schema})})
    return ";\n".join(source_statements(dataclasses.replace(resolved, spec=spec))) + ";"

# Everything but the wall-clock timestamps, which are the one thing a seed does not fix.
STABLE_COLUMNS = {
    "customers": "id, first_name, last_name, email",
    "accounts": "id, customer_id, account_type, currency, opening_balance, balance, status, closed_at is null",
    "transactions": "id, account_id, txn_type, amount, related_account_id, status",
}


@pytest.fixture(scope="module")
def pg(pg_server: Any) -> Any:
    pg_server.create_database(DATABASE)
    return pg_server


@pytest.fixture
def conn(pg: Any) -> Iterator[Any]:
    connection = pg.connect(DATABASE)
    connection.autocommit = True
    try:
        yield connection
    finally:
        connection.close()


def _fresh_schema(conn: Any) -> str:
    schema = f"gen_{uuid.uuid4().hex[:10]}"
    with conn.cursor() as cur:
        cur.execute(source_ddl(schema))
    return schema


def _run(pg: Any, schema: str, progress: Any = None, **options: Any) -> WorkloadResult:
    return run_workload(WORKLOAD, pg.connect_kwargs(DATABASE), schema, WorkloadOptions(**options), progress)


def _rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def _assert_books_balance(conn: Any, schema: str) -> None:
    """balance = opening_balance + Σ(DEPOSIT, TRANSFER_IN) - Σ(WITHDRAWAL, TRANSFER_OUT), compared as Decimals."""
    rows = _rows(
        conn,
        f"""select a.id, a.balance, a.opening_balance + coalesce(sum(case
                  when t.txn_type in ('DEPOSIT', 'TRANSFER_IN') then t.amount
                  when t.txn_type in ('WITHDRAWAL', 'TRANSFER_OUT') then -t.amount end), 0)
            from {schema}.accounts a left join {schema}.transactions t on t.account_id = a.id
            group by a.id order by a.id""",
    )
    assert rows, "no accounts were opened"
    wrong = [(aid, balance, expected) for aid, balance, expected in rows if balance != expected]
    assert not wrong, f"balances that do not reconcile (id, balance, expected): {wrong[:5]}"
    for _, balance, _ in rows:
        assert isinstance(balance, Decimal) and balance >= 0 and balance.as_tuple().exponent == -2
    assert _rows(conn, f"select count(*) from {schema}.transactions where amount <= 0") == [(0,)]
    assert _rows(conn, f"select count(*) from {schema}.accounts where opening_balance <= 0") == [(0,)]
    bad_types = _rows(
        conn,
        f"""select count(*) from {schema}.transactions where txn_type not in
            ('DEPOSIT', 'WITHDRAWAL', 'TRANSFER_IN', 'TRANSFER_OUT') or status <> 'COMPLETED'
            or (related_account_id is null) <> (txn_type in ('DEPOSIT', 'WITHDRAWAL'))""",
    )
    assert bad_types == [(0,)]
    # Closed accounts are empty, dated, and see no money after they closed.
    closed = _rows(
        conn,
        f"""select count(*) filter (where a.balance <> 0 or a.closed_at is null),
                   count(*) filter (where exists (select 1 from {schema}.transactions t
                                    where t.account_id = a.id and t.created_at > a.closed_at))
            from {schema}.accounts a where a.status = 'CLOSED'""",
    )
    assert closed == [(0, 0)]
    assert _rows(conn, f"select count(*) from {schema}.accounts where status not in ('OPEN', 'CLOSED')") == [(0,)]


def _assert_transfers_are_two_legs(conn: Any, schema: str) -> int:
    """Each TRANSFER_OUT has exactly one TRANSFER_IN mirror: same amount, time and database transaction."""
    counts = _rows(
        conn,
        f"""select count(*) filter (where txn_type = 'TRANSFER_OUT'), count(*) filter (where txn_type = 'TRANSFER_IN')
            from {schema}.transactions""",
    )
    (outs, ins) = counts[0]
    pairs = _rows(
        conn,
        f"""select o.id, count(i.id), bool_and(o.xmin = i.xmin), bool_and(o.account_id <> o.related_account_id),
                   bool_and(a.currency = b.currency)
            from {schema}.transactions o
            join {schema}.transactions i on i.txn_type = 'TRANSFER_IN' and i.account_id = o.related_account_id
                 and i.related_account_id = o.account_id and i.amount = o.amount and i.created_at = o.created_at
            join {schema}.accounts a on a.id = o.account_id
            join {schema}.accounts b on b.id = o.related_account_id
            where o.txn_type = 'TRANSFER_OUT' group by o.id""",
    )
    assert outs == ins == len(pairs), (outs, ins, len(pairs))
    assert all(n == 1 and same_xmin and distinct and same_ccy for _, n, same_xmin, distinct, same_ccy in pairs)
    return outs


def _snapshot(conn: Any, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: _rows(conn, f"select {columns} from {schema}.{table} order by id")
        for table, columns in STABLE_COLUMNS.items()
    }


def test_same_seed_gives_identical_rows(pg: Any, conn: Any) -> None:
    first, second, other = _fresh_schema(conn), _fresh_schema(conn), _fresh_schema(conn)
    for schema, seed in ((first, 7), (second, 7), (other, 8)):
        result = _run(pg, schema, seed=seed, once=True)
        assert result.seed == seed
    a, b = _snapshot(conn, first), _snapshot(conn, second)
    assert all(a[table] for table in a)
    assert a == b
    assert _snapshot(conn, other) != a


def test_once_changes_rows_in_every_way_and_books_balance(pg: Any, conn: Any) -> None:
    schema = _fresh_schema(conn)
    seen: list[dict[str, Any]] = []
    result = _run(pg, schema, progress=seen.append, seed=11, once=True)

    assert result.inserted["customers"] == 20 and result.inserted["accounts"] == 30
    assert result.inserted["transactions"] >= 300
    assert result.updated["customers"] == 10 and result.updated["accounts"] > 0
    assert result.deleted["customers"] == 2
    assert result.db_transactions >= 3 and result.iterations == 1 and result.seconds > 0
    assert seen and seen[-1]["inserted"] == result.inserted and len(seen) == result.db_transactions

    # What the result reports is what the database holds.
    assert _rows(conn, f"select count(*) from {schema}.customers") == [(18,)]
    assert _rows(conn, f"select count(*) from {schema}.transactions") == [(result.inserted["transactions"],)]
    # (a renamed customer may also be a deleted prospect: both changes are real CDC events)
    renamed = _rows(conn, f"select count(*) from {schema}.customers where updated_at > created_at")[0][0]
    assert 8 <= renamed <= 10
    assert _rows(conn, f"select count(*) from {schema}.accounts where status = 'CLOSED'") == [(2,)]
    emails = _rows(conn, f"select count(*), count(distinct email) from {schema}.customers")
    assert emails[0][0] == emails[0][1]
    # Deleted customers were prospects: nobody's account lost its owner (the FK would say so anyway).
    assert _rows(conn, f"select max(id) - count(*) from {schema}.customers") == [(2,)]

    _assert_books_balance(conn, schema)
    assert _assert_transfers_are_two_legs(conn, schema) > 0
    # The workload chooses ids itself but leaves every identity ahead of them for other inserters.
    for table in ("customers", "accounts", "transactions"):
        ahead = _rows(
            conn,
            f"select nextval(pg_get_serial_sequence('{schema}.{table}', 'id')) > max(id) from {schema}.{table}",
        )
        assert ahead == [(True,)], table

    # Timestamps: microseconds, in id order, equal only between the two legs of a transfer.
    order = _rows(
        conn,
        f"""select count(*) filter (where created_at < prev), count(*) filter (where created_at = prev),
                   count(*) filter (where extract(microseconds from created_at)::bigint % 1000000 <> 0)
            from (select created_at, lag(created_at) over (order by id) prev from {schema}.transactions) t""",
    )
    backwards, ties, with_micros = order[0]
    outs = _rows(conn, f"select count(*) from {schema}.transactions where txn_type = 'TRANSFER_OUT'")[0][0]
    assert backwards == 0 and ties == outs and with_micros > 0


def test_paced_run_keeps_books_balanced_and_resumes(pg: Any, conn: Any) -> None:
    schema = _fresh_schema(conn)
    ticks: list[dict[str, Any]] = []
    result = _run(pg, schema, progress=ticks.append, seed=3, rate=300, duration=2.5, batch_size=100)
    assert 2 <= result.iterations <= 4
    assert result.inserted["transactions"] >= 300
    assert sum(result.updated.values()) > 0 and result.db_transactions == len(ticks)
    totals = [t["inserted"].get("transactions", 0) for t in ticks]
    assert totals == sorted(totals)
    _assert_books_balance(conn, schema)
    _assert_transfers_are_two_legs(conn, schema)

    # A second run loads balances from the database and goes on without overdrawing anything.
    again = _run(pg, schema, seed=4, once=True)
    assert again.deleted["customers"] == 2
    _assert_books_balance(conn, schema)
    _assert_transfers_are_two_legs(conn, schema)


def test_bulk_mode_writes_exactly_n_transaction_rows(pg: Any, conn: Any) -> None:
    schema, twin = _fresh_schema(conn), _fresh_schema(conn)
    result = _run(pg, schema, seed=5, transactions=20_000, batch_size=3_000)
    assert result.inserted["transactions"] == 20_000
    assert _rows(conn, f"select count(*) from {schema}.transactions") == [(20_000,)]
    # Six full batches and a partial one, plus the bootstrap of the account population.
    assert result.iterations == 7 and result.db_transactions == 8
    assert result.inserted["accounts"] > 100  # accounts opened mid-run were used only once committed
    _assert_books_balance(conn, schema)
    _assert_transfers_are_two_legs(conn, schema)
    # Parallel writers do not cost reproducibility, and a second bulk run resumes on the first.
    _run(pg, twin, seed=5, transactions=20_000, batch_size=3_000)
    assert _snapshot(conn, twin) == _snapshot(conn, schema)
    _run(pg, schema, seed=6, transactions=5_000, batch_size=2_000)
    assert _rows(conn, f"select count(*) from {schema}.transactions") == [(25_000,)]
    _assert_books_balance(conn, schema)


def test_parallel_writer_commits_in_order_and_a_failure_stops_the_rest(pg: Any, conn: Any) -> None:
    """The bulk writer's contract: inserts may overlap, final changes and commits follow submission order."""
    workload = load_workload(WORKLOAD)
    schema = _fresh_schema(conn)
    with conn.cursor() as cur:
        cur.execute(f"create table {schema}.log(batch int, phase text, at timestamptz default clock_timestamp())")
    conns = [pg.connect(DATABASE), pg.connect(DATABASE)]
    committed: list[WorkloadResult] = []

    def op(batch: int, phase: str, fail: bool = False) -> Any:
        def run(cur: Any, done: WorkloadResult) -> None:
            if batch == 0 and phase == "insert":
                cur.execute("select pg_sleep(0.5)")  # the second batch's insert overtakes the first one
            if fail:
                raise RuntimeError(f"batch {batch} fails")
            cur.execute(f"insert into {schema}.log(batch, phase) values (%s, %s)", [batch, phase])
            done.insert("log")

        return run

    try:
        writer = workload.Writer(conns, committed.append, threaded=True)
        for batch in range(4):
            writer.submit(workload.Prepared(ops=[op(batch, "insert")], final_ops=[op(batch, "final")]))
        writer.drain()
        assert [r.inserted["log"] for r in committed] == [2, 2, 2, 2]
        finals = _rows(conn, f"select batch from {schema}.log where phase = 'final' order by at")
        assert finals == [(0,), (1,), (2,), (3,)]
        inserts = _rows(conn, f"select batch from {schema}.log where phase = 'insert' order by at")
        assert inserts[0] == (1,)

        committed.clear()
        writer.submit(workload.Prepared(ops=[op(10, "insert")], final_ops=[op(10, "final", fail=True)]))
        writer.submit(workload.Prepared(ops=[op(11, "insert")], final_ops=[op(11, "final")]))
        with pytest.raises(RuntimeError, match="batch 10 fails"):
            writer.drain()
        writer.drain(quiet=True)
        writer.close()
        assert committed == []
        assert _rows(conn, f"select count(*) from {schema}.log where batch >= 10") == [(0,)]
    finally:
        for c in conns:
            c.close()


def test_a_second_concurrent_workload_is_refused(pg: Any, conn: Any) -> None:
    schema = _fresh_schema(conn)
    with conn.cursor() as cur:
        cur.execute(
            "select pg_advisory_lock(hashtext(%s || '.bankflow.workloads.banking'))",
            [schema],
        )
    try:
        with pytest.raises(WorkloadError, match="another banking workload"):
            _run(pg, schema, seed=1, once=True)
    finally:
        with conn.cursor() as cur:
            cur.execute("select pg_advisory_unlock_all()")


def test_clear_errors(pg: Any, conn: Any, tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="not found"):
        load_workload(tmp_path / "missing.py")
    no_run = tmp_path / "no_run.py"
    no_run.write_text("x = 1\n")
    with pytest.raises(WorkloadError, match="no run"):
        load_workload(no_run)
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(WorkloadError, match="cannot import"):
        load_workload(broken)
    with pytest.raises(WorkloadError, match="does not exist"):
        _run(pg, "no_such_schema", once=True)
    empty = f"gen_{uuid.uuid4().hex[:10]}"
    with conn.cursor() as cur:
        cur.execute(f"create schema {empty}")
    with pytest.raises(WorkloadError, match="customers, accounts, transactions"):
        _run(pg, empty, once=True)
    # Tables that exist but do not fit: the database's complaint, as a WorkloadError.
    odd = _fresh_schema(conn)
    with conn.cursor() as cur:
        cur.execute(f"alter table {odd}.transactions rename column txn_type to kind")
    with pytest.raises(WorkloadError, match=r"failed in the database.*txn_type"):
        _run(pg, odd, once=True)
    with pytest.raises(WorkloadError, match="cannot connect"):
        run_workload(WORKLOAD, {**pg.connect_kwargs(DATABASE), "port": 1}, "x", WorkloadOptions(once=True))
    bad_options: list[dict[str, Any]] = [{"rate": 0}, {"duration": -1}, {"transactions": 0}, {"batch_size": 0}]
    for bad in bad_options:
        with pytest.raises(WorkloadError):
            WorkloadOptions(**bad)


def test_modes() -> None:
    assert WorkloadOptions(once=True, transactions=5).mode == "once"
    assert WorkloadOptions(transactions=5).mode == "bulk"
    assert WorkloadOptions(rate=5, transactions=5).mode == "paced"
    assert WorkloadOptions().mode == "paced"
    merged = WorkloadResult()
    for n in itertools.repeat(2, 3):
        merged.merge(WorkloadResult(inserted={"t": n}, db_transactions=1))
    assert merged.inserted == {"t": 6} and merged.db_transactions == 3 and merged.rows == 6
    assert WorkloadResult.coerce({"inserted": {"t": 1}, "seconds": 2.0}).inserted == {"t": 1}
