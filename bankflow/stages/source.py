"""Stage `source`: make sure the source is ready to stream, with consent, and that it matches the spec.

A source bankflow runs itself (the embedded `local` one) gets its schema, tables, replica identity, heartbeat
table and publication created idempotently. On a source somebody else runs bankflow never creates or alters a
table: it runs the setup statements only for what `source.manage` allows (publication, replica_identity,
heartbeat, signal, slot) and otherwise checks each prerequisite, stopping with the list of what is missing and a pointer
to `source/setup.sql` (written by `bankflow plan --out`). Both then check the source contract
(`bankflow.source.contract`): a spec column missing in the source, a type or a key that differs stops here,
before a slot exists; an extra source column is a warning (it would not be carried).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from bankflow.errors import StageError
from bankflow.source.contract import CatalogTable, Finding, live_findings, read_catalog
from bankflow.source.ddl import (
    HEARTBEAT_TABLE,
    SIGNAL_TABLE,
    heartbeat_statements,
    heartbeats_on,
    publication_statement,
    publication_tables,
    qualified,
    replica_identity_statement,
    signal_statements,
    signals_on,
    source_statements,
)
from bankflow.stages.base import RunContext, StageResult

if TYPE_CHECKING:
    from bankflow.source.base import PostgresServer
    from bankflow.spec.loader import ResolvedSpec

log = logging.getLogger(__name__)

SETUP_HINT = ("run the statements of source/setup.sql on the source (`bankflow plan --out DIR` writes it) "
              "or list what bankflow may manage in source.manage")


class _Prerequisites:
    """The checks on a source bankflow does not own: fix what `manage` allows, collect the rest."""

    def __init__(self, resolved: ResolvedSpec, server: PostgresServer, cur: Any, catalog: dict[str, CatalogTable]):
        self.resolved = resolved
        self.server = server
        self.cur = cur
        self.catalog = catalog
        self.missing: list[str] = []
        self.ran: list[str] = []

    def fix_or_report(self, item: str, statements: list[str], what: str) -> None:
        if self.server.manages(item):
            for statement in statements:
                self.cur.execute(statement)
            self.ran += statements
        else:
            self.missing.append(f"{what} (source.manage does not list {item})")

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        self.cur.execute(sql, params)
        row = self.cur.fetchone()
        return None if row is None else row[0]

    def access(self) -> None:
        spec = self.resolved.spec
        if not self.one("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"):
            self.missing.append(f"the user {spec.source.user} cannot replicate (ALTER ROLE … WITH REPLICATION)")
        schema = spec.source.schema_name
        if not self.one("SELECT has_schema_privilege(%s, 'USAGE')", (schema,)):
            self.missing.append(f"the user {spec.source.user} has no USAGE on schema {schema}")
        for table in spec.tables:
            if not self.one("SELECT has_table_privilege(%s, 'SELECT')", (qualified(self.resolved, table.name),)):
                self.missing.append(f"the user {spec.source.user} cannot SELECT from {schema}.{table.name}")

    def replica_identity(self) -> None:
        for table in self.resolved.spec.tables:
            live = self.catalog[table.name].replica_identity
            if live != table.replica_identity:
                self.fix_or_report("replica_identity", [replica_identity_statement(self.resolved, table)],
                                   f"{table.name} has replica identity {live}, the spec says {table.replica_identity}")

    def heartbeat(self) -> None:
        if not heartbeats_on(self.resolved):
            return
        name = qualified(self.resolved, HEARTBEAT_TABLE)
        if not self.one("SELECT to_regclass(%s) IS NOT NULL", (name,)):
            self.fix_or_report("heartbeat", heartbeat_statements(self.resolved), f"no heartbeat table {name}")
        elif not self.one("SELECT has_table_privilege(%s, 'INSERT') AND has_table_privilege(%s, 'UPDATE')",
                          (name, name)):
            # the engine writes a row every heartbeat_interval_ms: a table it cannot write is no heartbeat
            self.missing.append(f"the user {self.resolved.spec.source.user} cannot INSERT and UPDATE the heartbeat "
                                f"table {name} (GRANT INSERT, UPDATE ON {name} TO …, or heartbeat_interval_ms: 0)")

    def signal(self) -> None:
        if not signals_on(self.resolved):
            return
        name = qualified(self.resolved, SIGNAL_TABLE)
        if not self.one("SELECT to_regclass(%s) IS NOT NULL", (name,)):
            self.fix_or_report("signal", signal_statements(self.resolved),
                               f"no signal table {name} (Debezium's backfills are started through it)")
        elif not self.one("SELECT has_table_privilege(%s, 'SELECT') AND has_table_privilege(%s, 'INSERT')",
                          (name, name)):
            self.missing.append(f"the user {self.resolved.spec.source.user} cannot SELECT and INSERT the signal "
                                f"table {name} (GRANT SELECT, INSERT, DELETE ON {name} TO …)")

    def publication(self) -> None:
        spec = self.resolved.spec
        name = spec.cdc.publication
        self.cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,))
        if self.cur.fetchone() is None:
            self.fix_or_report("publication", [publication_statement(self.resolved, exists=False)],
                               f"no publication {name}")
            return
        self.cur.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,))
        listed = {(s, t) for s, t in self.cur.fetchall()}
        wanted = {(spec.source.schema_name, name) for name in publication_tables(self.resolved)}
        if listed != wanted:
            extra = ", ".join(sorted(f"{s}.{t}" for s, t in listed - wanted)) or "none"
            lacking = ", ".join(sorted(f"{s}.{t}" for s, t in wanted - listed)) or "none"
            self.fix_or_report("publication", [publication_statement(self.resolved, exists=True)],
                               f"publication {name} does not list exactly the spec's tables "
                               f"(missing: {lacking}; not in the spec: {extra})")

    def slot(self) -> None:
        slot = self.resolved.spec.cdc.slot
        self.cur.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        if self.cur.fetchone() is None and not self.server.manages("slot"):
            self.missing.append(f"no replication slot {slot} (source.manage does not list slot; with it the "
                                "CDC engine creates the slot and takes the initial snapshot)")

    def run(self) -> None:
        self.access()
        self.replica_identity()
        self.heartbeat()
        self.signal()
        self.publication()
        self.slot()


def _own_schema(resolved: ResolvedSpec, cur: Any) -> list[str]:
    """The embedded source: create everything (tables included); return the tables that were new."""
    spec = resolved.spec
    cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (spec.source.schema_name,))
    existing = {r[0] for r in cur.fetchall()}
    for statement in source_statements(resolved):
        cur.execute(statement)
    cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (spec.cdc.publication,))
    cur.execute(publication_statement(resolved, exists=cur.fetchone() is not None))
    return [t.name for t in spec.tables if t.name not in existing]


def _note_spec_columns(resolved: ResolvedSpec, catalog: dict[str, CatalogTable]) -> None:
    """Record which live columns the spec leaves out on purpose, so the stream does not take them for a
    schema change (bankflow.lake.schema_history.SchemaHistory.note_spec_columns)."""
    from bankflow.lake.schema_history import SchemaHistory

    history = SchemaHistory.of(resolved)
    for table in resolved.spec.tables:
        live = catalog.get(table.name)
        if live is not None:
            history.note_spec_columns(history.current_shape(table), {c.name for c in live.columns})


def contract_error(findings: list[Finding]) -> StageError | None:
    errors = [f for f in findings if f.severity == "error"]
    if not errors:
        return None
    return StageError("the source does not match the spec (nothing was changed on the source):\n"
                      + "\n".join(f"  - {f}" for f in errors)
                      + "\n  fix the spec (or the source) and run apply again")


def _wal_level(cur: Any) -> str:
    cur.execute("SHOW wal_level")
    return str(cur.fetchone()[0])


def ensure_source(resolved: ResolvedSpec, connect_kwargs: dict[str, Any],
                  server: PostgresServer | None = None) -> dict[str, Any]:
    import psycopg2

    from bankflow.source import source_server

    server = server or source_server(resolved)
    spec = resolved.spec
    created: list[str] = []
    conn = psycopg2.connect(**connect_kwargs)
    try:
        with conn, conn.cursor() as cur:
            if server.owns_schema:
                created = _own_schema(resolved, cur)
            catalog = read_catalog(cur, spec.source.schema_name, [t.name for t in spec.tables])
            findings = live_findings(resolved, cur, catalog)
            _note_spec_columns(resolved, catalog)
            error = contract_error(findings)
            if error is not None:
                raise error
            checks = _Prerequisites(resolved, server, cur, catalog)
            if not server.owns_schema:
                checks.run()
            wal_level = _wal_level(cur)
            if wal_level != "logical":
                checks.missing.append(f"the source runs with wal_level={wal_level}; CDC needs wal_level=logical "
                                      "(set it in postgresql.conf and restart the server)")
            if checks.missing:  # leaving `with conn` by an exception rolls back what `manage` allowed
                raise StageError("the source is not ready for CDC; missing:\n"
                                 + "\n".join(f"  - {m}" for m in checks.missing) + f"\n  {SETUP_HINT}")
    finally:
        conn.close()
    warnings = [str(f) for f in findings if f.severity != "error"]
    for warning in warnings:
        log.warning("source contract: %s", warning)
    details: dict[str, Any] = {"tables_created": created, "publication": spec.cdc.publication}
    if checks.ran:
        details["managed"] = checks.ran
    if warnings:
        details["warnings"] = warnings
    return details


LOCK_ATTEMPTS = 5  # tries of the source stage's transaction when concurrent writes deadlock it


def run(ctx: RunContext) -> StageResult:
    """Prepare the source. Its DDL takes table locks: against an application writing at the same moment it can
    deadlock (PostgreSQL then cancels one side); the stage's transaction is rolled back and tried again."""
    import psycopg2.errors

    started = time.monotonic()
    ctx.progress.update("source", "preparing the source database", force=True)
    attempts = LOCK_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            details = ensure_source(ctx.resolved, ctx.source_connect_kwargs())
            break
        except (psycopg2.errors.DeadlockDetected, psycopg2.errors.LockNotAvailable) as exc:
            if attempt == attempts:
                raise
            log.warning("preparing the source met concurrent writes (%s); trying again",
                        str(exc).splitlines()[0])
            time.sleep(0.2 * attempt)
    return StageResult("source", seconds=time.monotonic() - started, details=details)

