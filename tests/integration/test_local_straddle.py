"""kill -9 while a lake file straddles the slot's confirmed position, on the built-in engine (issue 14, item 5).

A COPY (and a multi-row INSERT) writes many rows under one change LSN; with batches smaller than the
transactions, files end in the middle of a transaction and of an LSN's rows, so after a crash the file that
holds the acknowledged position's neighbourhood is often half acknowledged (it *straddles*). The replay must skip
exactly its unacknowledged rows and cut every later orphan exactly where the crashed run did.

One database, spec, lake and warehouse serve every trial (so the test stays short on a small machine). Each trial:
a workload writes big COPY transactions, multi-row inserts, updates, key changes and deletes to three tables while
`bankflow apply --follow` (a subprocess in its own process group) streams them with a randomly chosen flush
policy; the process group is killed with SIGKILL as soon as a file straddles the slot's confirmed position (or
at a random moment if none does in time); then a plain `bankflow apply` must exit 0 and leave raw with no (key,
_lsn) twice and each table equal to the source. Trials: ``BANKFLOW_STRADDLE_TRIALS`` (10); seed:
``BANKFLOW_TEST_SEED`` (random, printed).
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import psycopg2
import pytest

from bankflow.lake.positions import LsnPosition, parse_file_name
from bankflow.source.embedded import EmbeddedPostgres

pytestmark = pytest.mark.integration

PASSWORD_VAR = "STRADDLE_PG_PASSWORD"
TABLES = ("ledger", "events", "accounts")

DDL = """
CREATE SCHEMA app;
CREATE TABLE app.ledger (id bigint PRIMARY KEY, amount numeric(12,2), memo text);
CREATE TABLE app.events (id bigint PRIMARY KEY, kind text, n integer);
CREATE TABLE app.accounts (id bigint PRIMARY KEY, label text, balance numeric(12,2));
ALTER TABLE app.ledger REPLICA IDENTITY FULL;
ALTER TABLE app.events REPLICA IDENTITY FULL;
ALTER TABLE app.accounts REPLICA IDENTITY FULL;
INSERT INTO app.accounts SELECT g, 'a' || g, g / 100.0 FROM generate_series(1, 400) g;
"""

COLUMNS = {"ledger": ("amount", '"numeric(12,2)"', "memo", "text"),
           "events": ("kind", "text", "n", "integer"),
           "accounts": ("label", "text", "balance", '"numeric(12,2)"')}

TABLE = """\
  - name: {name}
    primary_key: [id]
    columns:
      - {{name: id, type: bigint, nullable: false}}
      - {{name: {c1}, type: {t1}}}
      - {{name: {c2}, type: {t2}}}
"""

SPEC = """\
version: 1
name: straddle
state_dir: {root}/state
source:
  type: postgres
  embedded: false
  host: {host}
  port: {port}
  user: {user}
  password: ${{{variable}}}
  database: {database}
  schema: app
  sslmode: disable
  manage: [publication, replica_identity, heartbeat, slot]
tables:
{tables}cdc:
  engine: builtin
  topic_prefix: st_{tag}
  slot: st_{tag}
  publication: st_{tag}
  snapshot_mode: initial
lake:
  url: file://lake
  layout: "{{table}}/date={{date}}"
  flush: {{max_rows: {max_rows}, max_seconds: {max_seconds}}}
warehouse:
  type: duckdb
  path: wh.duckdb
"""


@dataclass
class Stack:
    pg: EmbeddedPostgres
    database: str
    tag: str
    root: Path

    @property
    def spec_path(self) -> Path:
        return self.root / "pipeline.yaml"

    def write_spec(self, max_rows: int, max_seconds: float) -> None:
        kwargs = self.pg.connect_kwargs(self.database)
        tables = "".join(TABLE.format(name=name, c1=c[0], t1=c[1], c2=c[2], t2=c[3]) for name, c in COLUMNS.items())
        self.spec_path.write_text(SPEC.format(
            root=self.root, host=kwargs["host"], port=kwargs["port"], user=kwargs["user"], variable=PASSWORD_VAR,
            database=self.database, tables=tables, tag=self.tag, max_rows=max_rows, max_seconds=max_seconds),
            encoding="utf-8")

    def sql(self, text: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.pg.execute(text, params, dbname=self.database) if params else \
            self.pg.execute(text, dbname=self.database)

    def raw(self, sql: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(self.root / "wh.duckdb"), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def apply(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "bankflow", "apply", str(self.spec_path), *args],
                              cwd=self.root, capture_output=True, timeout=240)

    def confirmed(self) -> int:
        row = self.sql("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                       (f"st_{self.tag}",))
        hi, lo = row[0][0].split("/")
        return (int(hi, 16) << 32) | int(lo, 16)

    def files(self) -> Iterator[tuple[Path, LsnPosition, LsnPosition]]:
        for table in TABLES:
            for path in (self.root / "lake" / table).rglob("*.parquet"):
                parsed = parse_file_name(path.name)
                if parsed is not None and parsed[0] == table:
                    yield path, parsed[1], parsed[2]

    def straddling(self) -> list[str]:
        """Lake files whose first event is acknowledged and last is not (the replay's skip case)."""
        resume = LsnPosition(self.confirmed(), 0)
        return [path.name for path, first, last in self.files() if first < resume <= last]

    def orphans(self) -> list[Path]:
        """Lake files wholly after the acknowledged position (the replay's cut case)."""
        resume = LsnPosition(self.confirmed(), 0)
        return [path for path, first, _last in self.files() if first >= resume]

    def follow(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "bankflow", "apply", str(self.spec_path), "--follow",
                                 "--stages", "source,cdc", "-q"], cwd=self.root, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)

    def kill_when(self, process: subprocess.Popen[bytes], ready: Any, wait: float, timeout: float = 4.0) -> None:
        """After `wait` seconds, kill the process group with SIGKILL as soon as `ready()` (or at `timeout`)."""
        try:
            time.sleep(wait)
            deadline = time.monotonic() + timeout
            while not ready() and time.monotonic() < deadline:
                assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
                time.sleep(0.01)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
            if process.stderr:
                process.stderr.close()


@pytest.fixture
def stack(pg_server: EmbeddedPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    tag = uuid.uuid4().hex[:8]
    database = f"st_{tag}"
    pg_server.create_database(database)
    pg_server.execute(DDL, dbname=database)
    monkeypatch.setenv(PASSWORD_VAR, pg_server.password)
    monkeypatch.chdir(tmp_path)
    try:
        yield Stack(pg_server, database, tag, tmp_path)
    finally:
        slot = f"st_{tag}"
        if pg_server.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)):
            pg_server.execute("SELECT pg_drop_replication_slot(%s)", (slot,), dbname=database)
        pg_server.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


class Workload:
    """One writer until stopped: COPY transactions bigger than a batch (many rows per change LSN), multi-row
    inserts, and transactions of updates, key changes and deletes; some transactions touch several tables."""

    def __init__(self, stack: Stack, rnd: random.Random) -> None:
        self.kwargs = stack.pg.connect_kwargs(stack.database)
        self.rnd = rnd
        top = {t: int(stack.sql(f"SELECT coalesce(max(id), 0) FROM app.{t}")[0][0]) for t in TABLES}
        self.next_id = {t: top[t] + 1 for t in TABLES}
        self.accounts = [i for (i,) in stack.sql("SELECT id FROM app.accounts")]
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.transactions = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Workload:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(60)
        assert self.error is None, self.error

    def _ids(self, table: str, n: int) -> range:
        first = self.next_id[table]
        self.next_id[table] = first + n
        return range(first, first + n)

    def _copy(self, cur: Any, table: str, n: int) -> None:
        rnd = self.rnd
        if table == "ledger":
            lines = (f"{i}\t{rnd.randint(-99999, 99999) / 100}\tm{i}\n" for i in self._ids(table, n))
        else:
            lines = (f"{i}\tk{i % 7}\t{rnd.randint(0, 10**6)}\n" for i in self._ids(table, n))
        cur.copy_expert(f"COPY app.{table} FROM STDIN", io.StringIO("".join(lines)))

    def _accounts(self, cur: Any) -> None:
        rnd = self.rnd
        ids = list(self._ids("accounts", rnd.randint(1, 30)))
        cur.execute("INSERT INTO app.accounts VALUES " + ", ".join(f"({i}, 'n{i}', {i % 1000}.25)" for i in ids))
        self.accounts += ids
        for _ in range(rnd.randint(0, 6)):
            kind, victim = rnd.random(), rnd.randrange(len(self.accounts))
            if kind < 0.5:
                cur.execute("UPDATE app.accounts SET balance = balance + 1, label = label || '+' WHERE id = %s",
                            (self.accounts[victim],))
            elif kind < 0.8:  # a key change: a delete and a create at one change LSN
                new = self._ids("accounts", 1)[0]
                cur.execute("UPDATE app.accounts SET id = %s WHERE id = %s", (new, self.accounts[victim]))
                self.accounts[victim] = new
            else:
                cur.execute("DELETE FROM app.accounts WHERE id = %s", (self.accounts.pop(victim),))

    def _transaction(self, cur: Any) -> None:
        rnd = self.rnd
        kind = rnd.random()
        if kind < 0.35:
            self._copy(cur, "ledger", rnd.randint(150, 700))
        elif kind < 0.55:
            self._copy(cur, "events", rnd.randint(20, 300))
        elif kind < 0.7:
            ids = self._ids("events", rnd.randint(2, 120))  # a multi-row INSERT
            cur.execute("INSERT INTO app.events VALUES " + ", ".join(f"({i}, 'v', {i % 97})" for i in ids))
        elif kind < 0.85:
            self._accounts(cur)
        else:  # one transaction across the tables: their batches hold each other's acknowledgement back
            self._copy(cur, "ledger", rnd.randint(50, 400))
            self._accounts(cur)
            self._copy(cur, "events", rnd.randint(10, 200))

    def _run(self) -> None:
        try:
            conn = psycopg2.connect(**self.kwargs)
            try:
                while not self.stop.is_set():
                    with conn.cursor() as cur:
                        self._transaction(cur)
                    conn.commit()
                    self.transactions += 1
                    time.sleep(self.rnd.uniform(0, 0.02))
            finally:
                conn.close()
        except BaseException as exc:
            self.error = exc


def check_exact(stack: Stack) -> None:
    """Raw holds no (id, _lsn) twice, and each table's latest live version per key equals the source."""
    for table in TABLES:
        dupes = stack.raw(f"SELECT count(*) FROM (SELECT id, _lsn FROM raw.{table} GROUP BY ALL HAVING count(*) > 1)")
        assert dupes[0][0] == 0, f"duplicate (id, _lsn) in raw.{table}"
        c1, c2 = COLUMNS[table][0], COLUMNS[table][2]
        source = {(i, str(a), str(b)) for i, a, b in stack.sql(f"SELECT id, {c1}::text, {c2}::text FROM app.{table}")}
        latest = stack.raw(f"SELECT id, {c1}::varchar, {c2}::varchar, _op FROM (SELECT *, row_number() OVER "
                           f"(PARTITION BY id ORDER BY _lsn DESC) AS r FROM raw.{table}) WHERE r = 1")
        live = {(i, str(a), str(b)) for i, a, b, op in latest if op != "d"}
        assert len(live) == len(source), f"raw.{table}: {len(live)} live keys, the source has {len(source)}"
        assert live == source, f"raw.{table} differs from the source: {sorted(live ^ source)[:5]}"
        if table != "accounts":  # insert-only: exactly one event per source row
            assert stack.raw(f"SELECT count(*) FROM raw.{table}")[0][0] == len(source), table


def test_kill_9_while_a_file_straddles_the_confirmed_position_then_apply_is_exact(stack: Stack) -> None:
    seed = int(os.environ.get("BANKFLOW_TEST_SEED") or random.randrange(10**9))
    trials = int(os.environ.get("BANKFLOW_STRADDLE_TRIALS", "10"))
    print(f"\nstraddle test seed: {seed} (BANKFLOW_TEST_SEED={seed} repeats it), {trials} trials")
    rnd = random.Random(seed)
    stack.write_spec(max_rows=200, max_seconds=0.5)
    first = stack.apply()  # publication, slot, the initial snapshot of accounts, raw
    assert first.returncode == 0, first.stderr.decode()
    straddled = 0
    t0 = time.monotonic()
    for trial in range(trials):
        max_rows, max_seconds = rnd.choice([97, 150, 200, 333]), rnd.choice([0.2, 0.5, 1.0, 3.0])
        stack.write_spec(max_rows=max_rows, max_seconds=max_seconds)
        with Workload(stack, random.Random(rnd.randrange(10**9))) as workload:
            # the start (imports, the source stage) takes a second or two, then it streams
            stack.kill_when(stack.follow(), stack.straddling, rnd.uniform(1.5, 3.5))
        at_kill = stack.straddling()
        straddled += bool(at_kill)
        result = stack.apply()
        print(f"trial {trial}: max_rows {max_rows}, max_seconds {max_seconds}, {workload.transactions} "
              f"transactions, straddling at the kill: {at_kill or 'none'}; apply exit {result.returncode}")
        assert result.returncode == 0, result.stderr.decode()[-3000:]
        check_exact(stack)
    print(f"{straddled} of {trials} kills hit a straddling file; {time.monotonic() - t0:.0f} s")
    assert straddled >= trials // 2, "too few kills hit a straddling file: the workload no longer makes them"


def test_a_replay_that_cannot_reproduce_an_orphan_fails_the_apply_and_loses_nothing(stack: Stack) -> None:
    """An orphan whose key the replay cannot meet (here renamed to a key of the format before `seq`): apply stops
    with an error (exit != 0) instead of writing its events under another key; with the key back, apply is exact."""
    stack.write_spec(max_rows=97, max_seconds=3.0)
    assert stack.apply().returncode == 0

    def tamperable() -> list[tuple[Path, LsnPosition, LsnPosition]]:
        """Orphans whose key without `seq` names another range, met nowhere (see ReplayPlan.cut_due): their first
        event is not the first at its LSN, and they end at another LSN."""
        orphans = set(stack.orphans())
        return [(p, first, last) for p, first, last in stack.files()
                if p in orphans and first.seq > 0 and first[:2] != last[:2]]

    with Workload(stack, random.Random(5)):
        stack.kill_when(stack.follow(), tamperable, 2.0, timeout=15.0)
    victims = tamperable()
    assert victims, "no orphan to tamper with after the kill: the workload no longer makes them"
    victim, first, last = victims[0]
    old_key = victim.with_name(f"{victim.name.split('-')[0]}-{first.commit:016X}.{first.lsn:016X}-"
                               f"{last.commit:016X}.{last.lsn:016X}.parquet")
    victim.rename(old_key)
    failed = stack.apply()
    report = (failed.stdout + failed.stderr).decode()
    assert failed.returncode != 0, report
    assert "without meeting it" in report or "cannot reproduce" in report, report
    print(f"\nthe apply that could not reproduce {old_key.name}:\n{report[-1500:]}")
    old_key.rename(victim)
    result = stack.apply()
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    check_exact(stack)
