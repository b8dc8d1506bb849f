"""Stage `source`: the source schema, tables, replica identity and publication, created idempotently.

With `source.embedded: true` (the `local` environment) bankflow also runs the PostgreSQL server itself
(`bankflow.source.embedded`), under the pipeline's state dir.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bankflow.render.sql import quote_pg
from bankflow.source.ddl import source_statements
from bankflow.stages.base import RunContext, StageResult

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec


def ensure_source(resolved: ResolvedSpec, connect_kwargs: dict[str, Any]) -> dict[str, Any]:
    import psycopg2

    spec = resolved.spec
    schema = spec.source.schema_name
    conn = psycopg2.connect(**connect_kwargs)
    created: list[str] = []
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))
            existing = {r[0] for r in cur.fetchall()}
            for statement in source_statements(resolved):
                cur.execute(statement)
            created = [t.name for t in spec.tables if t.name not in existing]
            # The publication lists exactly the spec's tables (a filtered publication, as Debezium's autocreate).
            tables = ", ".join(f"{quote_pg(schema)}.{quote_pg(t.name)}" for t in spec.tables)
            cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (spec.cdc.publication,))
            if cur.fetchone():
                cur.execute(f"ALTER PUBLICATION {quote_pg(spec.cdc.publication)} SET TABLE {tables}")
            else:
                cur.execute(f"CREATE PUBLICATION {quote_pg(spec.cdc.publication)} FOR TABLE {tables}")
            cur.execute("SHOW wal_level")
            wal_level = cur.fetchone()[0]
    finally:
        conn.close()
    if wal_level != "logical":
        from bankflow.errors import StageError

        raise StageError(f"the source runs with wal_level={wal_level}; CDC needs wal_level=logical "
                         "(set it in postgresql.conf and restart the server)")
    return {"tables_created": created, "publication": spec.cdc.publication}


def run(ctx: RunContext) -> StageResult:
    started = time.monotonic()
    ctx.progress.update("source", "preparing the source database", force=True)
    details = ensure_source(ctx.resolved, ctx.source_connect_kwargs())
    return StageResult("source", seconds=time.monotonic() - started, details=details)
