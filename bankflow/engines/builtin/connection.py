"""Connections of the built-in engine to the source: SQL sessions and the logical replication connection.

Both pin the session settings that decide the text form of values (timestamptz in UTC, ISO dates, …), since
the snapshot (COPY) and the stream (pgoutput) hand those texts to the lake's converters as they are.
"""

from __future__ import annotations

from typing import Any

SESSION_OPTIONS = ("-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 "
                   "-c bytea_output=hex")


class CdcError(RuntimeError):
    """The source is not set up for CDC (no publication, slot in use, wrong plugin, …)."""


def with_options(connect_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`connect_kwargs` with `SESSION_OPTIONS` appended to its libpq options."""
    kwargs = dict(connect_kwargs)
    kwargs["options"] = (kwargs.get("options", "") + " " + SESSION_OPTIONS).strip()
    return kwargs


def connect(connect_kwargs: dict[str, Any], *, autocommit: bool = True) -> Any:
    """A psycopg2 connection with the pinned session settings."""
    import psycopg2

    conn = psycopg2.connect(**with_options(connect_kwargs))
    conn.autocommit = autocommit
    return conn


def replication_connect(connect_kwargs: dict[str, Any]) -> Any:
    """A logical replication connection (CREATE_REPLICATION_SLOT, START_REPLICATION)."""
    import psycopg2
    import psycopg2.extras

    return psycopg2.connect(connection_factory=psycopg2.extras.LogicalReplicationConnection,
                            **with_options(connect_kwargs))
