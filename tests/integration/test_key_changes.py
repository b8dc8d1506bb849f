"""Primary-key changes end to end: `update … set id = id + 100000` is a delete of the old key plus a create.

Real services only. The built-in engine runs through `bankflow apply` on the embedded `local` environment (its own
PostgreSQL in a private state dir, pgoutput, Parquet, DuckDB, dbt-duckdb); Debezium runs on the session's
Tansu + Kafka Connect + moto harness. Each test moves keys of rows without children, applies again and checks:
- raw: a 'd' row of every old key and a 'c' row of every new key, both at the update's _lsn (and the 'd' carries
  the before-image the replica identity gives: the whole row under FULL, the key alone under DEFAULT);
- staging: the old key is deleted (never live), the new key is live exactly once;
- history: the old key's current version is its delete, the version before it is closed at the update's commit
  time; the new key has exactly one, current, version;
- dimensions / snapshots (banking project): the old key is closed and flagged deleted, the new key current once;
  balances hold the moved account once;
- `bankflow verify` passes, and an independent count (source rows vs raw's latest live rows vs staging's live rows,
  by key) matches.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

psycopg2 = pytest.importorskip("psycopg2")
duckdb = pytest.importorskip("duckdb")
pytest.importorskip("dbt.adapters.duckdb")

from bankflow.cli import main  # noqa: E402
from bankflow.source.embedded import EmbeddedPostgres  # noqa: E402

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BANKING_SPEC = str(REPO / "pipelines" / "banking.yaml")
SHIFT = 100_000
Moves = dict[tuple[Any, ...], tuple[Any, ...]]  # old key -> new key


# ---------------------------------------------------------------- helpers


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A private BANKFLOW_STATE_DIR (banking.yaml's local environment keeps everything there)."""
    directory = tmp_path / "state"
    previous = os.environ.get("BANKFLOW_STATE_DIR")
    os.environ["BANKFLOW_STATE_DIR"] = str(directory)
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop("BANKFLOW_STATE_DIR", None)
        else:
            os.environ["BANKFLOW_STATE_DIR"] = previous


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    code = main([*args, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    result: dict[str, Any] = json.loads(out.out)
    return result


def apply_ok(capsys: pytest.CaptureFixture[str], spec: str) -> dict[str, Any]:
    report = cli_json(capsys, "apply", spec)
    assert report["ok"], report
    return report


def verify_ok(capsys: pytest.CaptureFixture[str], spec: str) -> dict[str, Any]:
    verified = cli_json(capsys, "verify", spec)
    assert verified["ok"], verified
    assert all(c["ok"] for c in verified["checks"]), verified
    return verified


def source_conn(state_dir: Path, database: str) -> Any:
    conn = psycopg2.connect(**EmbeddedPostgres(state_dir / "postgres").connect_kwargs(database),
                            options="-c TimeZone=UTC")
    conn.autocommit = True
    return conn


def query(warehouse: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    # the same configuration as dbt-duckdb's connection, which may still be open in this process
    with duckdb.connect(str(warehouse)) as con:
        return con.execute(sql, params or []).fetchall()


def raw_key_rows(warehouse: Path, table: str, keys: list[str], wanted: set[tuple[Any, ...]]
                 ) -> dict[tuple[Any, ...], list[tuple[str, int, dict[str, Any]]]]:
    """(op, _lsn, row) of every raw event of the wanted keys, in _lsn order."""
    with duckdb.connect(str(warehouse)) as con:
        cur = con.execute(f"select * from raw.{table} order by _lsn")
        names = [d[0] for d in cur.description]
        out: dict[tuple[Any, ...], list[tuple[str, int, dict[str, Any]]]] = {}
        for values in cur.fetchall():
            row = dict(zip(names, values, strict=True))
            key = tuple(row[k] for k in keys)
            if key in wanted:
                out.setdefault(key, []).append((row["_op"], row["_lsn"], row))
    return out


def assert_key_moved_in_raw(warehouse: Path, table: str, keys: list[str],
                            moves: Moves, columns: list[str], *,
                            full: bool = True) -> None:
    """Each old key's last raw event is a 'd', each new key's only event a 'c', at the same _lsn and transaction.
    The 'c' carries the moved row's `columns`; the 'd' carries them too under REPLICA IDENTITY FULL (`full`), only
    the key under DEFAULT (those columns NULL)."""
    events = raw_key_rows(warehouse, table, keys, set(moves) | set(moves.values()))
    for old, new in moves.items():
        assert old in events, f"raw.{table}: no event of the old key {old}"
        assert new in events, f"raw.{table}: no event of the new key {new}"
        deletes = [e for e in events[old] if e[0] == "d"]
        assert len(deletes) == 1 and events[old][-1][0] == "d", f"raw.{table} {old}: {[e[:2] for e in events[old]]}"
        assert [e[0] for e in events[new]] == ["c"], f"raw.{table} {new}: {[e[:2] for e in events[new]]}"
        (_, d_lsn, d_row), (_, c_lsn, c_row) = deletes[0], events[new][0]
        assert d_lsn == c_lsn, f"raw.{table}: delete of {old} at {d_lsn}, create of {new} at {c_lsn}"
        assert d_row["_tx_id"] == c_row["_tx_id"] and d_row["_source_ts"] == c_row["_source_ts"]
        before = [e for e in events[old] if e[0] != "d"][-1][2]  # the version the key change moved
        for column in columns:
            assert c_row[column] == before[column], (table, new, column, c_row[column], before[column])
            expected = before[column] if full else None
            assert d_row[column] == expected, (table, old, column, d_row[column], expected)


def assert_source_matches_raw_and_staging(conn: Any, warehouse: Path, source_schema: str, table: str,
                                          keys: list[str], staging: str) -> int:
    """The independent count: the source's keys = raw's latest live keys = staging's live keys, each once."""
    key_sql = ", ".join(keys)
    with conn.cursor() as cur:
        cur.execute(f"select {key_sql} from {source_schema}.{table}")
        source_keys = Counter(tuple(r) for r in cur.fetchall())
    raw_live = Counter(tuple(r) for r in query(warehouse, (
        f"select {key_sql} from (select *, row_number() over (partition by {key_sql} order by _lsn desc) as rn "
        f"from raw.{table}) where rn = 1 and _op <> 'd'")))
    staged = Counter(tuple(r) for r in query(warehouse, f"select {key_sql} from analytics.{staging} "
                                                        "where not is_deleted"))
    assert source_keys == raw_live, (f"raw.{table}: {sorted(set(raw_live) - set(source_keys))[:5]} live but not in "
                                     f"the source, {sorted(set(source_keys) - set(raw_live))[:5]} missing")
    assert staged == source_keys, f"analytics.{staging} live keys differ from the source's"
    assert max(staged.values(), default=1) == 1
    return sum(source_keys.values())


def assert_history_closed(warehouse: Path, history: str, keys: list[str],
                          moves: Moves) -> None:
    """Old key: current version = the delete, the version before closed at the delete's commit time.
    New key: exactly one version, current, a create, valid from the same commit time."""
    key_sql = ", ".join(keys)
    rows: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for r in query(warehouse, f"select {key_sql}, _op, valid_from, valid_to, is_current, is_deleted "
                              f"from analytics.{history} order by {key_sql}, version_number"):
        rows.setdefault(tuple(r[:len(keys)]), []).append(r[len(keys):])
    for old, new in moves.items():
        versions = rows[old]
        op, valid_from, valid_to, current, deleted = versions[-1]
        assert (op, valid_to, current, deleted) == ("d", None, True, True), (history, old, versions)
        assert len(versions) >= 2 and versions[-2][2] == valid_from and not versions[-2][3], (history, old, versions)
        assert sum(1 for v in versions if v[3]) == 1
        assert rows[new] == [("c", valid_from, None, True, False)], (history, new, rows[new])
    current = Counter(k for k, versions in rows.items() for v in versions if v[3])
    assert set(current.values()) == {1}, f"{history}: a key without exactly one current version"


def assert_banking_marts(warehouse: Path, conn: Any, account_moves: Moves,
                         customer_moves: Moves, n_accounts: int,
                         source_schema: str = "banking") -> None:
    """banking_dbt's dimensions close the old keys and hold the new ones current once; balances count each live
    account once (moved accounts under their new key only) and reconcile with the source."""
    # dimensions (dbt snapshots): the old key closed and flagged deleted, the new key current once
    for dim, key, moves in (("dim_accounts", "account_id", account_moves),
                            ("dim_customers", "customer_id", customer_moves)):
        rows: dict[int, list[tuple[Any, ...]]] = {}
        for k, valid_to, current, deleted in query(
                warehouse, f"select {key}, valid_to, is_current, is_deleted from analytics.{dim} "
                           "order by valid_from"):
            rows.setdefault(k, []).append((valid_to, current, deleted))
        for (old,), (new,) in moves.items():
            assert rows[old][-1][1:] == (True, True), (dim, old, rows[old])
            assert all(v[0] is not None and not v[1] for v in rows[old][:-1]), (dim, old, rows[old])
            assert rows[new] == [(None, True, False)], (dim, new, rows[new])
        assert all(sum(1 for v in versions if v[1]) == 1 for versions in rows.values()), dim

    # balances: every live account once, the moved ones under their new key only, reconciled to the cent
    balances = query(warehouse, "select account_id, source_balance, difference from analytics.account_balances")
    ids = Counter(r[0] for r in balances)
    assert len(balances) == n_accounts and set(ids.values()) == {1}
    assert not {old for (old,) in account_moves} & set(ids)
    assert {new for (new,) in account_moves.values()} <= set(ids)
    assert all(r[2] == Decimal("0") for r in balances)
    with conn.cursor() as cur:
        cur.execute(f"select sum(balance) from {source_schema}.accounts")
        assert sum(r[1] for r in balances) == cur.fetchone()[0]


# ---------------------------------------------------------------- built-in engine, simple key (banking pipeline)


def open_childless_rows(conn: Any) -> None:
    """Two accounts without transactions and two customers without accounts (no foreign key points at them), so
    their keys can move whatever the workload left."""
    with conn.cursor() as cur:
        for name in ("Prospect", "Lead"):
            cur.execute("insert into banking.customers (first_name, last_name, email, created_at, updated_at) "
                        "values (%s, 'Moved', %s, now(), now())", (name, f"{name.lower()}@example.org"))
        cur.execute("select min(id) from banking.customers")
        owner = cur.fetchone()[0]
        for opening in ("120.55", "0.07"):
            cur.execute("insert into banking.accounts (customer_id, account_type, currency, opening_balance, "
                        "balance, status, created_at, updated_at) values (%s, 'SAVINGS', 'EUR', %s, %s, 'OPEN', "
                        "now(), now())", (owner, opening, opening))


def move_childless_keys(conn: Any) -> tuple[Moves, Moves, Moves, int]:
    """`update … set id = id + 100000` on every account without transactions (one statement, several rows), on up
    to three customers without accounts and on three deposits/withdrawals (a transaction row has no children; a
    transfer leg is left alone: its new version's transaction id would no longer pair with the other leg's).
    Returns the account, customer and transaction moves and the number of accounts."""
    with conn.cursor() as cur:
        cur.execute("select id from banking.transactions where txn_type in ('DEPOSIT', 'WITHDRAWAL') "
                    "order by id limit 3")
        transactions = [r[0] for r in cur.fetchall()]
        assert len(transactions) == 3
        cur.execute("update banking.transactions set id = id + %s where id = any(%s)", (SHIFT, transactions))
        cur.execute("select id from banking.accounts a where not exists (select 1 from banking.transactions t "
                    "where t.account_id = a.id or t.related_account_id = a.id) order by id")
        accounts = [r[0] for r in cur.fetchall()]
        cur.execute("select id from banking.customers c where not exists "
                    "(select 1 from banking.accounts a where a.customer_id = c.id) order by id limit 3")
        customers = [r[0] for r in cur.fetchall()]
        assert len(accounts) >= 2 and customers, (accounts, customers)
        cur.execute("select count(*) from banking.accounts")
        n_accounts = cur.fetchone()[0]
        cur.execute("update banking.accounts set id = id + %s where id = any(%s)", (SHIFT, accounts))
        assert cur.rowcount == len(accounts)
        cur.execute("update banking.customers set id = id + %s where id = any(%s)", (SHIFT, customers))
        assert cur.rowcount == len(customers)
    return ({(k,): (k + SHIFT,) for k in accounts}, {(k,): (k + SHIFT,) for k in customers},
            {(k,): (k + SHIFT,) for k in transactions}, n_accounts)


def assert_banking_keys_moved(warehouse: Path, conn: Any, account_moves: Moves, customer_moves: Moves,
                              transaction_moves: Moves, n_accounts: int) -> None:
    """raw, staging, history, dimensions, the fact and balances of the banking project after the key moves."""
    account_columns = ["customer_id", "account_type", "currency", "opening_balance", "balance", "status"]
    assert_key_moved_in_raw(warehouse, "accounts", ["id"], account_moves, account_columns)
    assert_key_moved_in_raw(warehouse, "customers", ["id"], customer_moves, ["first_name", "last_name", "email"])
    assert_key_moved_in_raw(warehouse, "transactions", ["id"], transaction_moves,
                            ["account_id", "txn_type", "amount", "status"])
    # staging: old keys deleted, new keys live once; the counts match the source
    for table, moves in (("accounts", account_moves), ("customers", customer_moves),
                         ("transactions", transaction_moves)):
        staged = dict(query(warehouse, f"select id, is_deleted from analytics.stg_{table}"))
        assert all(staged[old] is True for (old,) in moves), table
        assert all(staged[new] is False for (new,) in moves.values()), table
        assert_source_matches_raw_and_staging(conn, warehouse, "banking", table, ["id"], f"stg_{table}")
    assert_history_closed(warehouse, "account_history", ["id"], account_moves)
    assert_history_closed(warehouse, "customer_history", ["id"], customer_moves)
    assert_banking_marts(warehouse, conn, account_moves, customer_moves, n_accounts)
    # the incremental fact: the old leg flagged deleted (balances skip it), the new one live once
    fact = Counter((i, d) for i, d in query(warehouse, "select id, is_deleted from analytics.fact_transactions"))
    assert max(fact.values()) == 1
    for (old,), (new,) in transaction_moves.items():
        assert fact[(old, True)] == 1 and fact[(new, False)] == 1 and (old, False) not in fact, (old, new)
    with conn.cursor() as cur:
        cur.execute("select count(*), sum(amount) from banking.transactions")
        assert query(warehouse, "select count(*), sum(amount) from analytics.fact_transactions "
                                "where not is_deleted") == [cur.fetchone()]


def test_builtin_simple_key_change_closes_old_key_everywhere(state_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    warehouse = state_dir / "warehouse.duckdb"
    try:
        apply_ok(capsys, BANKING_SPEC)
        assert main(["generate", BANKING_SPEC, "--seed", "31", "-q"]) == 0
        conn = source_conn(state_dir, "bank")
        open_childless_rows(conn)
        apply_ok(capsys, BANKING_SPEC)

        account_moves, customer_moves, transaction_moves, n_accounts = move_childless_keys(conn)
        report = apply_ok(capsys, BANKING_SPEC)
        stages = {s["name"]: s for s in report["stages"]}
        moved = len(account_moves) + len(customer_moves) + len(transaction_moves)
        assert stages["cdc"]["events"] >= 2 * moved, stages["cdc"]
        assert_banking_keys_moved(warehouse, conn, account_moves, customer_moves, transaction_moves, n_accounts)
        conn.close()
        verify_ok(capsys, BANKING_SPEC)
    finally:
        main(["down", BANKING_SPEC, "--drop-slot", "-q"])
        EmbeddedPostgres(state_dir / "postgres").destroy()


# ---------------------------------------------------------------- built-in engine, composite key (custom spec)

LINE_COLUMNS = """\
      - {name: loan_id, type: bigint, nullable: false}
      - {name: seq, type: integer, nullable: false}
      - {name: amount, type: "numeric(20,4)", nullable: false}
      - {name: note, type: text}
"""
LINE_TABLES = ("lines_full", "lines_default")  # REPLICA IDENTITY FULL, DEFAULT


def loans_spec(root: Path, tag: str) -> Path:
    """Two tables keyed (loan_id, seq), one per replica identity, amounts numeric(20,4); dbt staging + history from
    banking_dbt's macros (composite key), verify checks per loan on staging's live rows."""
    state = root / "state"
    tables = "".join(f"""\
  - name: {name}
    primary_key: [loan_id, seq]
    replica_identity: {name.split('_')[1]}
    columns:
""" + LINE_COLUMNS for name in LINE_TABLES)
    checks = "".join(f"""\
    - name: {name} lines and amounts per loan
      source_sql: select loan_id, count(*), sum(amount) from {{source_schema}}.{name} group by loan_id
      warehouse_sql: >
        select loan_id, count(*), sum(amount) from {{target_schema}}.stg_{name}
        where not is_deleted group by loan_id
""" for name in LINE_TABLES)
    text = f"""\
version: 1
name: loans
state_dir: {state}
source:
  type: postgres
  database: loans
  user: postgres
  schema: lending
  embedded: true
  host: 127.0.0.1
  port: 0
  sslmode: disable
tables:
{tables}cdc:
  engine: builtin
  topic_prefix: loans
  slot: kc_{tag}
  publication: kc_{tag}
  snapshot_mode: initial
lake:
  url: file://{state}/lake
  layout: "{{table}}/date={{date}}"
  flush: {{max_rows: 100000, max_seconds: 1}}
warehouse:
  type: duckdb
  path: {state}/warehouse.duckdb
  raw_schema: raw
transform:
  project_dir: {root / 'loans_dbt'}
  target_schema: analytics
  steps:
    - {{name: staging, command: run, select: [staging, history]}}
    - {{name: tests, command: test}}
verify:
  checks:
{checks}"""
    path = root / "loans.yaml"
    path.write_text(text)
    write_loans_dbt(root / "loans_dbt")
    return path


def write_loans_dbt(project: Path) -> None:
    """A small dbt project on banking_dbt's own macros (latest_version / change_log_history with a composite key)."""
    shutil.copytree(REPO / "banking_dbt" / "macros", project / "macros")
    shutil.copytree(REPO / "banking_dbt" / "tests" / "generic", project / "tests" / "generic")
    (project / "models" / "staging").mkdir(parents=True)
    (project / "models" / "history").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(textwrap.dedent("""\
        name: loans_dbt
        version: "1.0.0"
        config-version: 2
        profile: bankflow
        model-paths: ["models"]
        macro-paths: ["macros"]
        test-paths: ["tests"]
        vars:
          raw_schema: raw
        models:
          loans_dbt:
            staging: {+materialized: view}
            history: {+materialized: table}
        flags:
          send_anonymous_usage_stats: false
        """))
    sources = ["version: 2", "sources:", "  - name: raw", "    schema: \"{{ var('raw_schema') }}\"", "    tables:"]
    sources += [f"      - name: {name}" for name in LINE_TABLES]
    (project / "models" / "staging" / "sources.yml").write_text("\n".join(sources) + "\n")
    tests = ["version: 2", "models:"]
    for name in LINE_TABLES:
        call = (f"source('raw', '{name}'), key=['loan_id', 'seq'], columns=['loan_id', 'seq', 'amount', 'note'], "
                "money_columns=['amount']")
        (project / "models" / "staging" / f"stg_{name}.sql").write_text(f"{{{{ latest_version({call}) }}}}\n")
        (project / "models" / "history" / f"{name}_history.sql").write_text(
            f"{{{{ change_log_history({call}) }}}}\n")
        tests += [f"  - name: stg_{name}", "    data_tests:",
                  "      - unique_combination: {arguments: {columns: [loan_id, seq]}}",
                  f"  - name: {name}_history", "    data_tests:",
                  "      - unique_combination: {arguments: {columns: [loan_id, seq]}, config: {where: is_current}}",
                  "      - unique_combination: {arguments: {columns: [loan_id, seq, version_number]}}"]
    (project / "models" / "schema.yml").write_text("\n".join(tests) + "\n")
    # history's current versions are staging's rows, key for key, deleted flag included
    for name in LINE_TABLES:
        (project / "tests" / f"assert_{name}_history_matches_staging.sql").write_text(textwrap.dedent(f"""\
            select coalesce(h.loan_id, s.loan_id) as loan_id, coalesce(h.seq, s.seq) as seq
            from (select * from {{{{ ref('{name}_history') }}}} where is_current) as h
            full outer join {{{{ ref('stg_{name}') }}}} as s
                on s.loan_id = h.loan_id and s.seq = h.seq
            where h.loan_id is null or s.loan_id is null or h.is_deleted <> s.is_deleted
               or not {{{{ null_safe_equal('h.amount', 's.amount') }}}}
            """))


def test_builtin_composite_key_change_full_and_default_identity(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(loans_spec(tmp_path, uuid.uuid4().hex[:8]))
    state = tmp_path / "state"
    warehouse = state / "warehouse.duckdb"
    try:
        apply_ok(capsys, spec)  # creates the embedded source and its tables, slot, raw
        conn = source_conn(state, "loans")
        with conn.cursor() as cur:
            for name in LINE_TABLES:
                cur.execute(f"insert into lending.{name} values (1, 1, 1234.5678, 'a'), (1, 2, 0.0001, 'b'), "
                            f"(1, 3, -7.1200, null), (2, 1, 99999999999999.9999, 'c'), (3, 1, 5, 'd')")
        apply_ok(capsys, spec)
        with conn.cursor() as cur:
            for name in LINE_TABLES:
                # one statement moves two keys by seq (kept in loan 1); another moves a key to another loan;
                # a plain update stays an update
                cur.execute(f"update lending.{name} set seq = seq + 100 where loan_id = 1 and seq in (1, 2)")
                assert cur.rowcount == 2
                cur.execute(f"update lending.{name} set loan_id = 7 where loan_id = 2 and seq = 1")
                cur.execute(f"update lending.{name} set note = 'kept' where loan_id = 3 and seq = 1")
        apply_ok(capsys, spec)

        moves = {(1, 1): (1, 101), (1, 2): (1, 102), (2, 1): (7, 1)}
        keys = ["loan_id", "seq"]
        for name in LINE_TABLES:
            full = name == "lines_full"
            assert_key_moved_in_raw(warehouse, name, keys, moves, ["amount", "note"], full=full)
            ops = dict(query(warehouse, f"select _op, count(*) from raw.{name} group by _op"))
            assert ops == {"c": 5 + 3, "d": 3, "u": 1}, (name, ops)
            staged = {tuple(r[:2]): r[2:] for r in query(
                warehouse, f"select loan_id, seq, is_deleted, amount::varchar from analytics.stg_{name}")}
            assert all(staged[old][0] is True for old in moves), (name, staged)
            # the amounts keep their four decimals (numeric(20,4) end to end, no rounding to cents)
            assert {k: v for k, v in staged.items() if not v[0]} == {
                (1, 101): (False, "1234.5678"), (1, 102): (False, "0.0001"), (1, 3): (False, "-7.1200"),
                (7, 1): (False, "99999999999999.9999"), (3, 1): (False, "5.0000")}, (name, staged)
            assert assert_source_matches_raw_and_staging(conn, warehouse, "lending", name, keys, f"stg_{name}") == 5
            assert_history_closed(warehouse, f"{name}_history", keys, moves)
        conn.close()
        verify_ok(capsys, spec)
    finally:
        main(["down", spec, "--drop-slot", "-q"])
        EmbeddedPostgres(state / "postgres").destroy()


def test_builtin_key_change_with_unchanged_toast_under_default_identity_is_not_silent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(loans_spec(tmp_path, uuid.uuid4().hex[:8]))
    state = tmp_path / "state"
    try:
        apply_ok(capsys, spec)
        conn = source_conn(state, "loans")
        with conn.cursor() as cur:  # 12.8 kB of incompressible text: stored out of line
            cur.execute("insert into lending.lines_default values (1, 1, 1, "
                        "(select string_agg(md5(i::text), '') from generate_series(1, 400) i))")
        apply_ok(capsys, spec)
        with conn.cursor() as cur:
            cur.execute("update lending.lines_default set seq = 2 where loan_id = 1")
        conn.close()
        capsys.readouterr()
        code = main(["apply", spec, "-q"])
        landed = query(state / "warehouse.duckdb",
                       "select length(note) from raw.lines_default where _op = 'c' and loan_id = 1 and seq = 2")
        # under REPLICA IDENTITY DEFAULT pgoutput sends the out-of-line TOAST value of a key-changing update as
        # 'unchanged' and the old key tuple cannot fill it in: the create of the new key is a dead letter, and
        # apply says so (exit 4) instead of succeeding silently
        assert landed == [(12800,)] or code == 4, (code, landed)
    finally:
        main(["down", spec, "--drop-slot", "-q"])
        EmbeddedPostgres(state / "postgres").destroy()


# ---------------------------------------------------------------- Debezium (stack harness)


@pytest.mark.timeout(900)
def test_debezium_simple_key_change_is_delete_plus_create(tmp_path: Path, pg_server: EmbeddedPostgres,
                                                          tansu_broker: Any, kafka_connect: Any,
                                                          s3_server: Any) -> None:
    """The banking pipeline on Debezium + Kafka Connect + Tansu + S3 (moto) + DuckDB: Debezium turns the key update
    into a delete of the old key and a create of the new one (tombstones off), and they land in raw as such."""
    from bankflow.engines.debezium.connect import ConnectClient
    from bankflow.pipeline import Pipeline
    from bankflow.spec.loader import load_spec
    from bankflow.spec.models import DebeziumCdc
    from tests.integration.test_stack_e2e import ENV, Stack, create_application_tables, drop_slot, write_spec

    tag = uuid.uuid4().hex[:8]
    database, bucket = f"keys_{tag}", f"keys-{tag}"
    pg_server.create_database(database)
    s3_server.create_bucket(bucket)
    state = tmp_path / "state"
    path = write_spec(tmp_path / "banking.yaml", tag=tag, database=database, port=pg_server.port,
                      connect_url=kafka_connect.rest_url, bootstrap=tansu_broker.bootstrap_servers,
                      s3_endpoint=s3_server.endpoint_url, bucket=bucket, state_dir=state)
    stack = Stack(path, database, tag, pg_server, kafka_connect, pg_server.password)
    create_application_tables(stack)
    resolved = load_spec(path, env=ENV)
    warehouse = state / "warehouse.duckdb"
    conn = pg_server.connect(database, options="-c TimeZone=UTC")
    conn.autocommit = True
    try:
        pipeline = Pipeline(resolved)
        assert pipeline.apply(stages=["source"], progress=False).ok
        pipeline.generate(seed=41, progress=False)
        open_childless_rows(conn)
        first = pipeline.apply(stages=["cdc", "load", "transform"], progress=False)
        assert first.ok, first.to_dict()

        account_moves, customer_moves, transaction_moves, n_accounts = move_childless_keys(conn)
        report = pipeline.apply(stages=["cdc", "load", "transform"], progress=False)
        assert report.ok, report.to_dict()
        assert_banking_keys_moved(warehouse, conn, account_moves, customer_moves, transaction_moves, n_accounts)
        conn.close()

        result = Pipeline(load_spec(path, env=ENV)).verify()
        assert result.ok, result.to_dict()
    finally:
        if not conn.closed:
            conn.close()
        cdc = resolved.spec.cdc
        assert isinstance(cdc, DebeziumCdc)
        ConnectClient(kafka_connect.rest_url).delete(cdc.connector)
        drop_slot(pg_server, database, resolved.spec.cdc.slot)
        pg_server.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


# ---------------------------------------------------------------- the Snowflake dialect (fakesnow), synthetic raw


def move_key(log: Any, table: str, old: int, new: int) -> None:
    """A key change as both engines deliver it: the old row deleted and the new one created at one _lsn."""
    row = log.rows[table].pop(old)
    moved = {**row, "id": new}
    log.rows[table][new] = moved
    lsn = log._next_lsn()
    log._tx.events += [(table, "d", dict(row), lsn), (table, "c", dict(moved), lsn)]


@pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result")
def test_banking_dbt_on_snowflake_fakesnow_closes_moved_keys(tmp_path: Path) -> None:
    """banking_dbt through dbt-snowflake (fakesnow) on a change log with moved account, customer and transaction
    keys: staging, history, dimensions, the fact and balances hold each new key once and no old key live."""
    fakesnow = pytest.importorskip("fakesnow")
    pytest.importorskip("dbt.adapters.snowflake")
    dbt_main = pytest.importorskip("dbt.cli.main")
    from tests.fixtures import raw_banking

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(
        "bankflow:\n  target: sf\n  outputs:\n    sf:\n      type: snowflake\n      account: fake\n"
        "      user: fake\n      password: fake\n      role: transformer\n      database: BANKING\n"
        "      warehouse: WH\n      schema: ANALYTICS\n      threads: 1\n")
    log = raw_banking.RawBankingLog(seed=12)
    raw_banking.build_initial(log)
    with log.transaction():
        aid = log.open_account(log.new_customer(), opening_cents=5_000)
    legs = {t["account_id"] for t in log.rows["transactions"].values()} | {
        t["related_account_id"] for t in log.rows["transactions"].values()}
    childless = sorted(a for a in log.rows["accounts"] if a not in legs)
    assert aid in childless
    prospect = log.customers_without_accounts()[0]
    deposit = min(t for t, r in log.rows["transactions"].items() if r["txn_type"] == "DEPOSIT")
    with log.transaction():
        for account in childless:
            move_key(log, "accounts", account, account + SHIFT)
        move_key(log, "customers", prospect, prospect + SHIFT)
        move_key(log, "transactions", deposit, deposit + SHIFT)
    moved = {"accounts": childless, "customers": [prospect], "transactions": [deposit]}

    with fakesnow.patch(create_database_on_connect=True):
        import snowflake.connector

        con = snowflake.connector.connect(database="BANKING", schema="RAW")
        try:
            cur = con.cursor()
            raw_banking.flush_snowflake(log, cur)
            for args in (["run", "--select", "staging", "history"], ["snapshot"], ["run", "--select", "marts"],
                         ["test"]):
                res = dbt_main.dbtRunner().invoke([
                    *args, "--project-dir", str(REPO / "banking_dbt"), "--profiles-dir", str(profiles),
                    "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs")])
                assert res.success, f"dbt {args} on fakesnow: {res.exception}"

            def q(sql: str) -> list[Any]:
                return list(cur.execute(sql).fetchall())  # type: ignore[union-attr]

            for table, keys in moved.items():
                live = Counter(i for (i,) in q(f"select id from ANALYTICS.stg_{table} where not is_deleted"))
                assert set(live) == set(log.rows[table]) and set(live.values()) == {1}, table
                for old in keys:
                    assert q(f"select is_deleted from ANALYTICS.stg_{table} where id = {old}") == [(True,)]
            for history, table in (("account_history", "accounts"), ("customer_history", "customers")):
                current = dict(q(f"select id, is_deleted from ANALYTICS.{history} where is_current"))
                assert all(current[old] is True for old in moved[table]), history
                assert all(current[old + SHIFT] is False for old in moved[table]), history
                assert q(f"select count(*) from ANALYTICS.{history} where id in "
                         f"({', '.join(str(k + SHIFT) for k in moved[table])})") == [(len(moved[table]),)]
            dim = Counter(i for (i,) in q("select account_id from ANALYTICS.dim_accounts "
                                          "where is_current and not is_deleted"))
            assert set(dim) == set(log.rows["accounts"]) and set(dim.values()) == {1}
            balances = dict(q("select account_id, computed_balance from ANALYTICS.account_balances"))
            assert balances == log.balances()
            fact = dict(q("select id, is_deleted from ANALYTICS.fact_transactions"))
            assert fact[deposit] is True and fact[deposit + SHIFT] is False
            assert q("select count(*) from ANALYTICS.fact_transactions where not is_deleted") == [
                (len(log.rows["transactions"]),)]
        finally:
            con.close()
