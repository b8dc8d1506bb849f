"""Banking workload: a Faker bank whose books always balance, for the banking pipeline's source tables.

Why it exists: the seed projects' generators only ever inserted, wrote one-row transfers and let balances
drift from their transactions, so CDC updates/deletes, SCD2 history and reconciliation tests had nothing to
check. This workload opens and closes accounts, moves money (transfers as two legs in one database
transaction), renames customers and deletes prospects, and after every commit, for every account:

    balance = opening_balance + Σ(DEPOSIT, TRANSFER_IN) - Σ(WITHDRAWAL, TRANSFER_OUT)

Money is ``Decimal`` with two places, never float; balances never go negative (they are kept in memory,
loaded from the database at start so a run can resume on an existing database). Everything is batched:
customer and account ids are reserved from their identity sequences, transaction ids are assigned here
(and the sequence moved past them), rows go in with COPY, balances with one UPDATE per batch, one commit
per batch. With a ``seed`` a run on a fresh database produces identical rows, ids included, except the
timestamps, which are wall-clock (microseconds, UTC) so that they line up with commit times downstream.

A batch is *prepared* in Python (all decisions, all SQL text) and then *executed* in one database
transaction. In bulk mode batches execute on writer threads with two connections, so PostgreSQL ingests
batches k and k+1 at once while Python prepares k+2 (psycopg2 releases the GIL while it waits on the
server). The COPYs overlap; the balance UPDATEs and commits run strictly in preparation order, so no
commit ever shows a balance that relies on a later one. Rows created in batch k are only referenced from
batch k+2 on, when batch k has certainly committed (foreign keys cannot see another transaction's rows).

Loaded by path through ``bankflow.generate.load_workload``; the runner sets ``search_path`` to the schema.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any

from bankflow.generate import ProgressCallback, WorkloadError, WorkloadOptions, WorkloadResult
from bankflow.generate.pgcopy import copy_data, copy_line

TABLES = ("customers", "accounts", "transactions")
COUNTED_TABLE = "transactions"  # what --transactions N counts (the runner's progress shows a percentage of it)
CURRENCIES = ("USD", "EUR", "GBP")
CURRENCY_WEIGHTS = (60, 25, 15)
ACCOUNT_TYPES = ("CHECKING", "SAVINGS", "CREDIT")
ACCOUNT_TYPE_WEIGHTS = (55, 35, 10)
CENT = Decimal("0.01")
ZERO = Decimal("0.00")

CUSTOMER_COLUMNS = ("id", "first_name", "last_name", "email", "created_at", "updated_at")
ACCOUNT_COLUMNS = (
    "id",
    "customer_id",
    "account_type",
    "currency",
    "opening_balance",
    "balance",
    "status",
    "created_at",
    "updated_at",
    "closed_at",
)
TRANSACTION_COLUMNS = ("id", "account_id", "txn_type", "amount", "related_account_id", "status", "created_at")

# Business-transaction mix (a transfer is one business transaction and two rows).
P_TRANSFER = 0.20
P_WITHDRAWAL = 0.38
# Share of new customers who stay prospects (no account) for now; prospects are the ones that get deleted.
PROSPECT_SHARE = 0.25
# Per business transaction, how often the other kinds of change happen in paced mode.
PER_TXN = {"customers": 1 / 15, "accounts": 1 / 10, "updates": 1 / 30, "closes": 1 / 150, "deletes": 1 / 150}
# Bulk mode is for throughput: a stable population of accounts, changes other than transactions kept rare.
PER_TXN_BULK = {
    "customers": 1 / 2000,
    "accounts": 1 / 2000,
    "updates": 1 / 500,
    "closes": 1 / 5000,
    "deletes": 1 / 5000,
}
BULK_ACCOUNTS = (100, 500)  # bounds of the bulk population: one account per 1000 transactions in between
BULK_ID_BLOCK = 256  # ids reserved per round trip in bulk mode (gaps at the end of a run are harmless)
BULK_WRITERS = 2  # connections writing at once in bulk mode: the FK checks of COPY are PostgreSQL's bottleneck
TICK_SECONDS = 1.0
DEFAULT_RATE = 50.0
# Never close the last accounts: transactions need somewhere to go.
MIN_OPEN_ACCOUNTS = 10
ADVISORY_LOCK_KEY = ".bankflow.workloads.banking"
UNLIMITED = 1 << 62


@dataclass(frozen=True)
class Plan:
    """What one batch does; ``events`` are business transactions, ``max_rows`` caps transaction rows."""

    customers: int = 0
    accounts: int = 0
    events: int = 0
    updates: int = 0
    closes: int = 0
    deletes: int = 0
    max_rows: int = UNLIMITED


ONCE = Plan(customers=20, accounts=30, events=300, updates=10, closes=2, deletes=2)


@dataclass
class Account:
    """An open account as the generator knows it (closed accounts are forgotten: nothing touches them)."""

    id: int
    customer_id: int
    currency: str
    balance: Decimal


Op = Callable[[Any, WorkloadResult], None]


@dataclass
class Prepared:
    """One batch ready to execute on one cursor: inserts (may overlap other batches), then ordered changes.

    ``ops`` only insert new rows; ``final_ops`` change existing ones (balances, renames, deletes) and run,
    with the commit, after the previous batch has committed.
    """

    ops: list[Op] = field(default_factory=list)
    final_ops: list[Op] = field(default_factory=list)
    transaction_rows: int = 0


class Pool:
    """A set with O(1) add, remove and uniform random choice, iterated in a reproducible order."""

    __slots__ = ("items", "pos")

    def __init__(self, items: Iterable[int] = ()) -> None:
        self.items: list[int] = []
        self.pos: dict[int, int] = {}
        for item in items:
            self.add(item)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item: int) -> bool:
        return item in self.pos

    def add(self, item: int) -> None:
        if item not in self.pos:
            self.pos[item] = len(self.items)
            self.items.append(item)

    def remove(self, item: int) -> None:
        i = self.pos.pop(item, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last] = i

    def choice(self, rng: random.Random) -> int:
        return self.items[int(rng.random() * len(self.items))]

    def sample(self, rng: random.Random, k: int) -> list[int]:
        return rng.sample(self.items, min(k, len(self.items)))


class Clock:
    """Wall-clock UTC timestamps as PostgreSQL text, strictly increasing, microseconds, cheap to make.

    Formatting a datetime per row costs more than the rest of a row; the date-time prefix changes once
    a second, so it is cached and only the microseconds are formatted.
    """

    def __init__(self) -> None:
        self.last_us = 0
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        us = time.time_ns() // 1000
        if us <= self.last_us:
            us = self.last_us + 1
        self.last_us = us
        second, micro = divmod(us, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{micro:06d}+00"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower()) or "x"


def _email(first: str, last: str, customer_id: int, domain: str, version: int | None = None) -> str:
    """Unique by construction: names are letters only, so the numeric tail names exactly one customer."""
    tail = f".{customer_id}" if version is None else f".{customer_id}.{version}"
    return f"{_slug(first)}.{_slug(last)}{tail}@{domain}"


def _amount(rng: random.Random) -> Decimal:
    """A positive amount with two places, drawn as integer cents (no float ever becomes money)."""
    r = rng.random()
    if r < 0.70:
        cents = 100 + int(rng.random() * 19_900)  # 1.00 to 199.99
    elif r < 0.95:
        cents = 20_000 + int(rng.random() * 180_000)  # 200.00 to 1 999.99
    else:
        cents = 200_000 + int(rng.random() * 1_800_000)  # 2 000.00 to 19 999.99
    return Decimal(cents).scaleb(-2)


def _at_most(rng: random.Random, balance: Decimal) -> Decimal:
    """An amount in (0, balance]: what a withdrawal or transfer may take without overdrawing."""
    amount = _amount(rng)
    if amount <= balance:
        return amount
    part = (balance * (10 + int(rng.random() * 80)) / 100).quantize(CENT, rounding=ROUND_DOWN)
    return part if part > ZERO else balance


def _stochastic_round(rng: random.Random, x: float) -> int:
    """Round so that the expectation is x: low rates still close accounts and delete prospects, sometimes."""
    n = math.floor(x)
    return n + (1 if rng.random() < x - n else 0)


class _Link:
    """The commit of one batch, which the next batch waits for before it changes rows and commits."""

    __slots__ = ("committed", "done")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.committed = False


class Writer:
    """Executes prepared batches, one database transaction each, and reports each commit in order.

    Without threads a batch runs at once on the first connection. With threads, up to one batch per
    connection is in flight: their inserts overlap, their final changes and commits are chained in
    submission order, and a failed batch fails every later one. Results are reported on the caller's
    thread (in ``submit``/``drain``), so progress callbacks never run on a writer thread.
    """

    def __init__(self, conns: list[Any], on_commit: Callable[[WorkloadResult], None], threaded: bool) -> None:
        self.conns = conns
        self.on_commit = on_commit
        self._pool = ThreadPoolExecutor(len(conns), thread_name_prefix="bankflow-writer") if threaded else None
        self._inflight: deque[Future[WorkloadResult]] = deque()
        self._last: _Link | None = None
        self._submitted = 0

    @property
    def depth(self) -> int:
        """How many consecutive batches may be uncommitted at once."""
        return len(self.conns) if self._pool is not None else 1

    @staticmethod
    def _execute(conn: Any, prepared: Prepared, after: _Link | None, link: _Link) -> WorkloadResult:
        done = WorkloadResult(db_transactions=1)
        try:
            with conn.cursor() as cur:
                for op in prepared.ops:
                    op(cur, done)
                if after is not None:
                    after.done.wait()
                    if not after.committed:
                        raise WorkloadError("banking workload: an earlier batch failed, so this one rolled back")
                for op in prepared.final_ops:
                    op(cur, done)
            conn.commit()
            link.committed = True
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            link.done.set()
        return done

    def submit(self, prepared: Prepared) -> None:
        if self._pool is None:
            self.on_commit(self._execute(self.conns[0], prepared, None, _Link()))
            return
        while len(self._inflight) >= len(self.conns):
            self._collect()  # the oldest batch in flight is the one using the connection we need next
        conn = self.conns[self._submitted % len(self.conns)]
        link = _Link()
        self._inflight.append(self._pool.submit(self._execute, conn, prepared, self._last, link))
        self._last = link
        self._submitted += 1

    def _collect(self) -> None:
        """Report the oldest batch in flight; an interrupted wait leaves it queued to be counted later."""
        future = self._inflight[0]
        try:
            done = future.result()
        except KeyboardInterrupt:
            raise
        except BaseException:
            self._inflight.popleft()
            raise
        self._inflight.popleft()
        self.on_commit(done)

    def drain(self, quiet: bool = False) -> None:
        """Wait for every batch in flight and report them; afterwards all connections are idle.

        ``quiet`` (while already failing or interrupted) counts what committed and drops later failures,
        which only repeat the first one.
        """
        while self._inflight:
            try:
                self._collect()
            except Exception:
                if not quiet:
                    raise

    def close(self) -> None:
        """Let batches in flight finish (commit or roll back) so no connection is busy on return."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class Bank:
    """The generator's in-memory view of the source, and the batches that keep it true."""

    def __init__(self, conn: Any, seed: int, id_block: int = 1, depth: int = 1) -> None:
        from faker import Faker

        self.conn = conn
        self.rng = random.Random(seed)
        self.fake = Faker("en_US")
        self.fake.seed_instance(seed)
        self.clock = Clock()
        self.id_block = id_block
        self.spare_ids: dict[str, list[int]] = {"customers": [], "accounts": []}
        self.before_sql: Callable[[], None] = lambda: None
        self.customers: dict[int, tuple[str, str, str]] = {}
        self.account_holders: set[int] = set()
        self.customer_pool = Pool()
        self.prospects = Pool()
        # New rows wait here until no batch that could run alongside theirs is left (see the module doc).
        self.depth = depth
        self.batch_no = 0
        self.preparing = False
        self.quarantine: deque[tuple[int, list[int], list[int]]] = deque()
        self.accounts: dict[int, Account] = {}
        # Transaction ids are ours, not the identity's: two writers' COPYs would interleave the identity's
        # values, and a seed must give the same ids. The sequence is moved past them in every batch.
        self.next_transaction_id = 1
        self.open_accounts = Pool()
        self.open_by_currency = {c: Pool() for c in CURRENCIES}

    # -- state ---------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Read the current customers and open accounts, so that a run resumes on an existing database."""
        with self.conn.cursor() as cur:
            cur.execute("select t, to_regclass(t) is not null from unnest(%s::text[]) as t", [list(TABLES)])
            missing = [t for t, present in cur.fetchall() if not present]
            if missing:
                cur.execute("select current_schemas(false)")
                (schemas,) = cur.fetchone()
                raise WorkloadError(
                    f"banking workload: table(s) {', '.join(missing)} not found in schema(s) {schemas}; "
                    "create the source tables first (the pipeline's source stage does)"
                )
            cur.execute("select pg_try_advisory_lock(hashtext(current_schema() || %s))", [ADVISORY_LOCK_KEY])
            if not cur.fetchone()[0]:
                raise WorkloadError(
                    "banking workload: another banking workload is writing to this schema; its in-memory "
                    "balances would go stale, so run one at a time"
                )
            cur.execute("select distinct customer_id from accounts order by customer_id")
            self.account_holders.update(cid for (cid,) in cur)
            cur.execute("select id, first_name, last_name, email from customers order by id")
            for cid, first, last, email in cur:
                self._add_customer(cid, first, last, email)
            cur.execute("select id, customer_id, currency, balance from accounts where status = 'OPEN' order by id")
            for aid, cid, currency, balance in cur:
                self._add_account(Account(aid, cid, currency.strip(), balance))
            cur.execute(
                "select greatest((select max(id) from transactions), "
                "pg_sequence_last_value(pg_get_serial_sequence('transactions', 'id')::regclass))"
            )
            self.next_transaction_id = (cur.fetchone()[0] or 0) + 1
        self.conn.commit()

    def _add_customer(self, cid: int, first: str, last: str, email: str, fresh: bool = False) -> None:
        self.customers[cid] = (first, last, email)
        if fresh and self.depth > 1:
            self.quarantine[-1][1].append(cid)
        else:
            self._release_customer(cid)

    def _release_customer(self, cid: int) -> None:
        if cid in self.customers:
            self.customer_pool.add(cid)
            if cid not in self.account_holders:
                self.prospects.add(cid)

    def _add_account(self, account: Account, fresh: bool = False) -> None:
        self.accounts[account.id] = account
        self.account_holders.add(account.customer_id)
        self.prospects.remove(account.customer_id)
        if fresh and self.depth > 1:
            self.quarantine[-1][2].append(account.id)
        else:
            self._release_account(account.id)

    def _release_account(self, aid: int) -> None:
        account = self.accounts[aid]
        self.open_accounts.add(aid)
        self.open_by_currency.setdefault(account.currency, Pool()).add(aid)

    def _release(self, up_to: int) -> None:
        """Make rows of batches numbered <= up_to usable: those batches have committed."""
        while self.quarantine and self.quarantine[0][0] <= up_to:
            _, customers, accounts = self.quarantine.popleft()
            for cid in customers:
                self._release_customer(cid)
            for aid in accounts:
                self._release_account(aid)

    def barrier(self) -> None:
        """Wait until everything submitted has committed; then every row is usable (except the batch being
        prepared: its rows are usable within it, and by others once it commits)."""
        self.before_sql()
        self._release(self.batch_no - 1 if self.preparing else self.batch_no)

    def _drop_account(self, account: Account) -> None:
        del self.accounts[account.id]
        self.open_accounts.remove(account.id)
        self.open_by_currency[account.currency].remove(account.id)

    def _reserve_ids(self, table: str, n: int) -> list[int]:
        """Ids from the identity sequence up front: emails carry them, transactions reference them."""
        spare = self.spare_ids[table]
        if len(spare) < n:
            self.barrier()  # the connection must be idle: wait for the batches in flight
            with self.conn.cursor() as cur:
                cur.execute(
                    "select nextval(pg_get_serial_sequence(%s, 'id')) from generate_series(1, %s)",
                    [table, max(n - len(spare), self.id_block)],
                )
                spare.extend(sorted(r[0] for r in cur.fetchall()))
        taken, self.spare_ids[table] = spare[:n], spare[n:]
        return taken

    # -- one batch = one database transaction ---------------------------------------------------------------
    def prepare(self, plan: Plan) -> Prepared:
        """Decide everything ``plan`` does and render its SQL; the in-memory state moves on at once."""
        self.batch_no += 1
        self._release(self.batch_no - self.depth)
        self.quarantine.append((self.batch_no, [], []))
        self.preparing = True
        try:
            batch = Prepared()
            new_customers = self._new_customers(batch, plan.customers)
            new_accounts = self._open_accounts(batch, plan.accounts, new_customers)
            self._transactions(batch, plan, new_accounts)
            self._update_customers(batch, plan.updates)
            self._delete_prospects(batch, plan.deletes, {cid for cid, _ in new_customers})
        finally:
            self.preparing = False
        return batch

    def _new_customers(self, batch: Prepared, n: int) -> list[tuple[int, bool]]:
        """Insert n customers; returns (id, wants_account) so that some stay prospects."""
        if n <= 0:
            return []
        lines = []
        out = []
        for cid in self._reserve_ids("customers", n):
            first, last = self.fake.first_name(), self.fake.last_name()
            email = _email(first, last, cid, self.fake.free_email_domain())
            ts = self.clock.now()
            lines.append(copy_line((cid, first, last, email, ts, ts)))
            self._add_customer(cid, first, last, email, fresh=True)
            out.append((cid, self.rng.random() >= PROSPECT_SHARE))
        batch.ops.append(_copy_op("customers", CUSTOMER_COLUMNS, lines))
        return out

    def _open_accounts(self, batch: Prepared, n: int, new_customers: list[tuple[int, bool]]) -> set[int]:
        """Open n accounts, each with an opening deposit: first for new customers, then for existing ones."""
        owners = [cid for cid, wants in new_customers if wants][:n]
        while len(owners) < n and self.customer_pool:
            # Existing customers open more accounts; now and then a prospect converts.
            pool = self.prospects if self.prospects and self.rng.random() < 0.2 else self.customer_pool
            owners.append(pool.choice(self.rng))
        while len(owners) < n and owners:  # nobody else is usable yet: this batch's customers open a second one
            owners.append(owners[int(self.rng.random() * len(owners))])
        if not owners:
            return set()
        ids = self._reserve_ids("accounts", len(owners))
        lines = []
        for aid, cid in zip(ids, owners, strict=True):
            currency = self.rng.choices(CURRENCIES, CURRENCY_WEIGHTS)[0]
            kind = self.rng.choices(ACCOUNT_TYPES, ACCOUNT_TYPE_WEIGHTS)[0]
            opening = _amount(self.rng)
            ts = self.clock.now()
            lines.append(copy_line((aid, cid, kind, currency, opening, opening, "OPEN", ts, ts, None)))
            self._add_account(Account(aid, cid, currency, opening), fresh=True)
        batch.ops.append(_copy_op("accounts", ACCOUNT_COLUMNS, lines))
        return set(ids)

    def _transactions(self, batch: Prepared, plan: Plan, new_accounts: set[int]) -> None:
        """Closes, then deposits/withdrawals/transfers; rows by COPY, balances by one UPDATE … FROM VALUES."""
        rng, now, accounts = self.rng, self.clock.now, self.accounts
        max_rows = plan.max_rows
        base = self.next_transaction_id
        lines: list[str] = []
        delta: dict[int, Decimal] = {}
        closed: dict[int, str] = {}

        # Closing: withdraw what is left (one WITHDRAWAL row), then status CLOSED. Accounts opened in this
        # batch are left alone so every account lives through at least one commit as OPEN.
        candidates = [a for a in self.open_accounts.sample(rng, plan.closes * 3) if a not in new_accounts]
        room = max(0, len(self.open_accounts) - MIN_OPEN_ACCOUNTS)
        for aid in candidates[: min(plan.closes, room, max_rows)]:
            account = accounts[aid]
            ts = now()
            if account.balance > ZERO:
                lines.append(f"{base + len(lines)}\t{aid}\tWITHDRAWAL\t{account.balance!s}\t\\N\tCOMPLETED\t{ts}\n")
                delta[aid] = delta.get(aid, ZERO) - account.balance
                account.balance = ZERO
            closed[aid] = ts
            self._drop_account(account)

        events = 0
        random_ = rng.random
        open_ids = self.open_accounts.items
        by_currency = self.open_by_currency
        while events < plan.events and len(lines) < max_rows and open_ids:
            events += 1
            r = random_()
            src = accounts[open_ids[int(random_() * len(open_ids))]]
            ts = now()
            if r < P_TRANSFER and src.balance > ZERO and len(lines) + 2 <= max_rows:
                peers = by_currency[src.currency].items
                if len(peers) > 1:
                    dst = src
                    while dst is src:
                        dst = accounts[peers[int(random_() * len(peers))]]
                    amount = _at_most(rng, src.balance)
                    src.balance -= amount
                    dst.balance += amount
                    delta[src.id] = delta.get(src.id, ZERO) - amount
                    delta[dst.id] = delta.get(dst.id, ZERO) + amount
                    text = str(amount)
                    tid = base + len(lines)
                    lines.append(f"{tid}\t{src.id}\tTRANSFER_OUT\t{text}\t{dst.id}\tCOMPLETED\t{ts}\n")
                    lines.append(f"{tid + 1}\t{dst.id}\tTRANSFER_IN\t{text}\t{src.id}\tCOMPLETED\t{ts}\n")
                    continue
            if r < P_TRANSFER + P_WITHDRAWAL and src.balance > ZERO:
                amount = _at_most(rng, src.balance)
                src.balance -= amount
                delta[src.id] = delta.get(src.id, ZERO) - amount
                lines.append(f"{base + len(lines)}\t{src.id}\tWITHDRAWAL\t{amount!s}\t\\N\tCOMPLETED\t{ts}\n")
            else:  # deposits, and what an empty account or a lone currency cannot do
                amount = _amount(rng)
                src.balance += amount
                delta[src.id] = delta.get(src.id, ZERO) + amount
                lines.append(f"{base + len(lines)}\t{src.id}\tDEPOSIT\t{amount!s}\t\\N\tCOMPLETED\t{ts}\n")

        if delta or closed:
            ts = now()
            # Every value is an int, a Decimal, a fixed word or our own timestamp text: safe to inline,
            # and far cheaper than quoting thousands of parameters.
            values = [f"({aid},{d!s},'OPEN',null,'{ts}')" for aid, d in delta.items() if aid not in closed]
            values += [f"({aid},{delta.get(aid, ZERO)!s},'CLOSED','{at}','{ts}')" for aid, at in closed.items()]
            batch.final_ops.append(_balance_op(values))
        if lines:
            batch.ops.append(_copy_op("transactions", TRANSACTION_COLUMNS, lines))
            batch.transaction_rows += len(lines)
            self.next_transaction_id = base + len(lines)
            batch.final_ops.append(_sequence_op("transactions", self.next_transaction_id - 1))

    def _update_customers(self, batch: Prepared, n: int) -> None:
        """Customers change email and/or name: the updates that make SCD2 history worth having."""
        if n <= 0 or not self.customer_pool:
            return
        rng, fake = self.rng, self.fake
        ts = self.clock.now()
        values = []
        for cid in sorted(self.customer_pool.sample(rng, n)):
            first, last, email = self.customers[cid]
            r = rng.random()
            if r < 0.6:  # a name change (marriage: mostly the last name), sometimes with a new address
                if rng.random() < 0.75:
                    last = fake.last_name()
                else:
                    first = fake.first_name()
            if r < 0.25 or r >= 0.6:  # a new email address
                old = email
                while email == old:
                    email = _email(first, last, cid, fake.free_email_domain(), 1000 + int(rng.random() * 9000))
            self.customers[cid] = (first, last, email)
            values.append((cid, first, last, email, ts))

        def op(cur: Any, done: WorkloadResult) -> None:
            from psycopg2.extras import execute_values

            execute_values(
                cur,
                "update customers as c set first_name = v.first_name, last_name = v.last_name, "
                "email = v.email, updated_at = v.ts "
                "from (values %s) as v(id, first_name, last_name, email, ts) where c.id = v.id",
                values,
                template="(%s::bigint, %s::text, %s::text, %s::text, %s::timestamptz)",
                page_size=len(values),
            )
            done.update("customers", cur.rowcount)

        batch.final_ops.append(op)

    def _delete_prospects(self, batch: Prepared, n: int, new: set[int]) -> None:
        """Delete customers that never had an account (only they can go: accounts reference customers).

        Customers created in this same batch are spared, so every deleted row was once committed.
        """
        if n <= 0 or not self.prospects:
            return
        ids = sorted(c for c in self.prospects.sample(self.rng, n + len(new)) if c not in new)[:n]
        if not ids:
            return
        for cid in ids:
            del self.customers[cid]
            self.customer_pool.remove(cid)
            self.prospects.remove(cid)

        def op(cur: Any, done: WorkloadResult) -> None:
            cur.execute("delete from customers where id = any(%s)", [ids])
            done.delete("customers", cur.rowcount)

        batch.final_ops.append(op)


def _copy_op(table: str, columns: tuple[str, ...], lines: list[str]) -> Op:
    data = "".join(lines).encode()  # encoded here, on the preparing thread, not on the writer thread
    n = len(lines)

    def op(cur: Any, done: WorkloadResult) -> None:
        copy_data(cur, table, columns, data)
        done.insert(table, n)

    return op


def _balance_op(values: list[str]) -> Op:
    # Relative update (balance + delta): the invariant holds even if our view of a balance were stale.
    statement = (
        "update accounts as a set balance = a.balance + v.delta, status = v.status, "
        "closed_at = coalesce(v.closed_at::timestamptz, a.closed_at), updated_at = v.ts::timestamptz "
        "from (values " + ",".join(values) + ") as v(id, delta, status, closed_at, ts) where a.id = v.id"
    )

    def op(cur: Any, done: WorkloadResult) -> None:
        cur.execute(statement)
        done.update("accounts", cur.rowcount)

    return op


def _sequence_op(table: str, last_id: int) -> Op:
    """Keep the identity ahead of the ids we chose, so other inserters (and the next run) never collide."""

    def op(cur: Any, done: WorkloadResult) -> None:
        cur.execute("select setval(pg_get_serial_sequence(%s, 'id'), %s)", [table, last_id])

    return op


def _scaled(rng: random.Random, events: float, per_txn: dict[str, float] = PER_TXN) -> Plan:
    """A plan whose other changes are proportional to its business transactions."""
    return Plan(
        customers=_stochastic_round(rng, events * per_txn["customers"]),
        accounts=_stochastic_round(rng, events * per_txn["accounts"]),
        events=int(events),
        updates=_stochastic_round(rng, events * per_txn["updates"]),
        closes=_stochastic_round(rng, events * per_txn["closes"]),
        deletes=_stochastic_round(rng, events * per_txn["deletes"]),
    )


def _bootstrap(bank: Bank, accounts: int) -> Plan | None:
    """Enough open accounts for transactions to spread over (a fresh database has none)."""
    missing = accounts - len(bank.open_accounts)
    if missing <= 0:
        return None
    return Plan(customers=math.ceil(missing / (1 - PROSPECT_SHARE) * 0.8), accounts=missing)


def run(conn: Any, options: WorkloadOptions, progress: ProgressCallback | None = None) -> WorkloadResult:
    """Run the banking workload on ``conn`` (search_path already set) and return the committed counts."""
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    started = time.perf_counter()
    mode = options.mode
    bank = Bank(conn, seed, id_block=BULK_ID_BLOCK if mode == "bulk" else 1)
    bank.load()
    total = WorkloadResult(seed=seed)

    def on_commit(done: WorkloadResult) -> None:
        total.merge(done)
        total.seconds = time.perf_counter() - started
        if progress is not None:
            progress(total.as_dict())

    extra: list[Any] = []
    try:
        if mode == "bulk" and options.connect is not None:
            extra = [options.connect() for _ in range(BULK_WRITERS - 1)]
        writer = Writer([conn, *extra], on_commit, threaded=mode == "bulk")
        bank.depth = writer.depth
        bank.before_sql = writer.drain

        def commit(plan: Plan) -> int:
            batch = bank.prepare(plan)
            writer.submit(batch)
            return batch.transaction_rows

        try:
            if mode == "once":
                _iteration(commit, ONCE, options.batch_size)
                total.iterations = 1
            elif mode == "bulk":
                _bulk(bank, options.transactions or 0, options.batch_size, commit, total)
            else:
                _paced(bank, options, commit, total, started)
            writer.drain()
        except KeyboardInterrupt:
            pass  # the batch being prepared is dropped; what committed is counted
        finally:
            writer.close()
            with contextlib.suppress(KeyboardInterrupt):
                writer.drain(quiet=True)
    finally:
        for other in extra:
            other.close()
    total.seconds = time.perf_counter() - started
    return total


Commit = Callable[[Plan], int]


def _iteration(commit: Commit, plan: Plan, batch_size: int) -> None:
    """One iteration as several commits, like a day at a bank: onboarding, business, then housekeeping.

    Housekeeping (updates, closes, deletes) commits last so it can touch accounts and prospects created
    earlier in the same iteration, which keeps --once on a fresh database exercising every kind of change.
    """
    if plan.customers or plan.accounts:
        commit(Plan(customers=plan.customers, accounts=plan.accounts))
    left = plan.events
    while left > 0:
        n = min(left, batch_size)
        commit(Plan(events=n))
        left -= n
    if plan.updates or plan.closes or plan.deletes:
        commit(Plan(updates=plan.updates, closes=plan.closes, deletes=plan.deletes))


def _bulk(bank: Bank, target: int, batch_size: int, commit: Commit, total: WorkloadResult) -> None:
    """Exactly ``target`` transaction rows as fast as possible, other changes mixed in proportionally.

    One commit per batch of ``batch_size`` transaction rows (closing withdrawals included), with the
    batch's share of new customers, new accounts, updates, closes and deletes.
    """
    low, high = BULK_ACCOUNTS
    boot = _bootstrap(bank, max(low, min(high, target // 1000)))
    if boot is not None:
        commit(boot)
        bank.barrier()  # the population must be committed before transactions can reference it
    written = 0
    while written < target:
        rows = min(batch_size, target - written)
        plan = _scaled(bank.rng, rows / 1.2, PER_TXN_BULK)
        got = commit(
            Plan(
                customers=plan.customers,
                accounts=plan.accounts,
                events=UNLIMITED,
                updates=plan.updates,
                closes=plan.closes,
                deletes=plan.deletes,
                max_rows=rows,
            )
        )
        if got == 0:
            raise WorkloadError("banking workload: no open accounts left to write transactions to")
        written += got
        total.iterations += 1


def _paced(bank: Bank, options: WorkloadOptions, commit: Commit, total: WorkloadResult, started: float) -> None:
    """One iteration per tick at ``rate`` business transactions per second, until duration or the row cap."""
    rate = options.rate or DEFAULT_RATE
    boot = _bootstrap(bank, MIN_OPEN_ACCOUNTS * 2)
    if boot is not None:
        commit(boot)
    carry = 0.0
    tick = 0
    while True:
        if options.duration is not None and time.perf_counter() - started >= options.duration:
            return
        if options.transactions is not None and total.inserted.get("transactions", 0) >= options.transactions:
            return
        carry += rate * TICK_SECONDS
        events = math.floor(carry)
        carry -= events
        _iteration(commit, _scaled(bank.rng, events), options.batch_size)
        total.iterations += 1
        tick += 1
        wake = started + tick * TICK_SECONDS
        if options.duration is not None:
            wake = min(wake, started + options.duration)
        time.sleep(max(0.0, wake - time.perf_counter()))
