"""The Postgres source: the server (embedded or external), its connection, and the DDL bankflow may run on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bankflow.source.base import PostgresServer
    from bankflow.spec.loader import ResolvedSpec


def source_server(resolved: ResolvedSpec) -> PostgresServer:
    """The spec's source server: the only place that reads `source.embedded`."""
    if resolved.spec.source.embedded:
        from bankflow.source.embedded import EmbeddedSource

        return EmbeddedSource(resolved)
    from bankflow.source.external import ExternalPostgres

    return ExternalPostgres(resolved)


def source_connect_kwargs(resolved: ResolvedSpec, *, start: bool = True) -> dict[str, Any]:
    """psycopg2 kwargs for the source database; `start` starts an embedded server first."""
    return source_server(resolved).connect_kwargs(start=start)
