"""Loads and transforms while the source is written on several connections at once, with overlapping transactions.

Real parts only: the embedded PostgreSQL of banking.yaml's `local` environment, the built-in pgoutput reader,
Parquet, DuckDB and dbt-duckdb, driven through `Pipeline.apply`. Writer threads (psycopg2, one connection each,
disjoint accounts so they never wait on each other's row locks) run deposits, withdrawals and transfers whose
transactions begin before and commit after others; one transaction stays open across a whole apply. A change's
LSN is taken when it is written, so a transaction that began first commits changes with LOWER LSNs after later
ones were loaded and transformed: the old `_lsn > max(_lsn)` fact lost exactly those for good. `apply` runs
(cdc, load, transform) repeatedly while they write; after they stop, a final apply; then the marts equal the
source: `verify` passes and fact_transactions has every transaction of the source, once.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

psycopg2 = pytest.importorskip("psycopg2")
duckdb = pytest.importorskip("duckdb")
pytest.importorskip("dbt.adapters.duckdb")

from bankflow.pipeline import Pipeline  # noqa: E402
from bankflow.source.embedded import EmbeddedPostgres  # noqa: E402
from bankflow.spec.loader import load_spec  # noqa: E402

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "pipelines" / "banking.yaml"
WRITERS = 4
STAGES = ["cdc", "load", "transform"]


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[tuple[Pipeline, Path]]:
    directory = tmp_path / "state"
    previous = os.environ.get("BANKFLOW_STATE_DIR")
    os.environ["BANKFLOW_STATE_DIR"] = str(directory)
    pipe = Pipeline(load_spec(SPEC, env="local"))
    try:
        yield pipe, directory
    finally:
        try:
            pipe.down(drop_slot=True)
        finally:
            EmbeddedPostgres(directory / "postgres").destroy()
            if previous is None:
                os.environ.pop("BANKFLOW_STATE_DIR", None)
            else:
                os.environ["BANKFLOW_STATE_DIR"] = previous


def connect(state_dir: Path) -> Any:
    conn = psycopg2.connect(**EmbeddedPostgres(state_dir / "postgres").connect_kwargs("bank"),
                            options="-c TimeZone=UTC -c search_path=banking")
    conn.autocommit = False
    return conn


def post(cur: Any, account: int, txn_type: str, amount: Decimal, related: int | None = None) -> None:
    """One leg and its balance update (the workload's books: balance = opening + signed legs)."""
    sign = 1 if txn_type in ("DEPOSIT", "TRANSFER_IN") else -1
    cur.execute("insert into transactions (account_id, txn_type, amount, related_account_id, status, created_at) "
                "values (%s, %s, %s, %s, 'COMPLETED', now())", (account, txn_type, amount, related))
    cur.execute("update accounts set balance = balance + %s, updated_at = now() where id = %s",
                (sign * amount, account))


class Writer(threading.Thread):
    """Business transactions on its own accounts, each held open a random while before it commits."""

    def __init__(self, state_dir: Path, accounts: list[int], seed: int, stop: threading.Event) -> None:
        super().__init__(name=f"writer-{seed}", daemon=True)
        self.state_dir, self.accounts, self.stop = state_dir, accounts, stop
        self.rng = random.Random(seed)
        self.committed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = connect(self.state_dir)
            try:
                with conn.cursor() as cur:
                    while not self.stop.is_set():
                        self.one(cur)
                        time.sleep(self.rng.uniform(0, 0.05))  # the hold: others write and commit meanwhile
                        conn.commit()
                        self.committed += 1
            finally:
                conn.close()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def one(self, cur: Any) -> None:
        account = self.rng.choice(self.accounts)
        amount = Decimal(self.rng.randint(1, 50_000)) / 100
        cur.execute("select balance, currency from accounts where id = %s and status = 'OPEN' for update", (account,))
        row = cur.fetchone()
        if row is None or row[0] < amount or self.rng.random() < 0.5:
            post(cur, account, "DEPOSIT", amount)
            return
        peers = [a for a in self.accounts if a != account]
        if peers and self.rng.random() < 0.5:
            other = self.rng.choice(peers)
            cur.execute("select currency from accounts where id = %s and status = 'OPEN' for update", (other,))
            peer = cur.fetchone()
            if peer is not None and peer[0] == row[1]:
                post(cur, account, "TRANSFER_OUT", amount, other)
                post(cur, other, "TRANSFER_IN", amount, account)
                return
        post(cur, account, "WITHDRAWAL", amount)


def test_applies_during_overlapping_writes_end_with_marts_equal_to_the_source(
        pipeline: tuple[Pipeline, Path]) -> None:
    pipe, state_dir = pipeline
    pipe.generate(seed=11, progress=False)
    first = pipe.apply(stages=["source", *STAGES], progress=False)
    assert first.ok, first.to_dict()

    conn = connect(state_dir)
    with conn.cursor() as cur:
        cur.execute("select id from accounts where status = 'OPEN' order by id")
        accounts = [a for (a,) in cur.fetchall()]
    conn.commit()
    assert len(accounts) >= 2 * WRITERS
    # the long transaction: a deposit written now (a low LSN), committed only after a whole apply ran
    long_account, accounts = accounts[0], accounts[1:]
    with conn.cursor() as cur:
        post(cur, long_account, "DEPOSIT", Decimal("123.45"))
        cur.execute("select max(id) from transactions")
        (long_id,) = cur.fetchone()

    stop = threading.Event()
    writers = [Writer(state_dir, accounts[i::WRITERS], seed=i, stop=stop) for i in range(WRITERS)]
    for writer in writers:
        writer.start()
    try:
        time.sleep(1.0)
        for i in range(3):
            report = pipe.apply(stages=STAGES, progress=False)
            assert report.ok, report.to_dict()
            if i == 0:
                conn.commit()  # committed after the changes an apply already loaded and transformed
            time.sleep(0.5)
    finally:
        stop.set()
        for writer in writers:
            writer.join(timeout=60)
        conn.close()
    assert all(w.error is None for w in writers), [w.error for w in writers]
    assert sum(w.committed for w in writers) > 20

    final = pipe.apply(stages=STAGES, progress=False)
    assert final.ok, final.to_dict()
    verified = pipe.verify()
    assert verified.ok, verified

    source = connect(state_dir)
    try:
        with source.cursor() as cur:
            cur.execute("select id, amount from transactions")
            expected = dict(cur.fetchall())
    finally:
        source.close()
    warehouse = state_dir / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        fact = con.execute("select id, amount from analytics.fact_transactions where not is_deleted").fetchall()
        # the overlap really happened: legs committed after legs with higher LSNs were already in raw
        loads = con.execute("select count(distinct load_seq) from raw._bankflow_loaded_files").fetchone()
    assert len(fact) == len({i for i, _ in fact})
    assert dict(fact) == expected
    assert long_id in expected
    assert loads is not None and loads[0] >= 4
