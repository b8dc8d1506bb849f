"""The source database as bankflow reaches it: a server bankflow runs itself, or one somebody else runs.

`bankflow.source.source_server(resolved)` is the one place that chooses between them (the spec's
`source.embedded`); everything else asks the object it returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec

# Sessions are pinned to UTC and ISO dates: text formats (timestamptz, dates) follow the session's settings.
SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO"


class PostgresServer(ABC):
    def __init__(self, resolved: ResolvedSpec):
        self.resolved = resolved
        self.source = resolved.spec.source

    @abstractmethod
    def server_kwargs(self, *, start: bool) -> dict[str, Any]:
        """psycopg2 kwargs for the server; `start` starts an embedded server (and creates its database)."""

    def connect_kwargs(self, *, start: bool = True) -> dict[str, Any]:
        """psycopg2 kwargs for the source database (session pinned to UTC and ISO dates)."""
        kwargs = self.server_kwargs(start=start)
        kwargs["options"] = SESSION_OPTIONS
        kwargs.setdefault("connect_timeout", 10)
        return kwargs

    def reader_kwargs(self, *, start: bool = True) -> dict[str, Any]:
        """psycopg2 kwargs for reading only (`verify`). A server bankflow runs has a role that can do nothing
        else; for one somebody else runs, these are the spec's own credentials (give bankflow a read-only role)."""
        return self.connect_kwargs(start=start)

    def is_running(self) -> bool | None:
        """True/False when bankflow can tell without connecting; None when only a connection can tell."""
        return None

    def connection_info(self) -> dict[str, Any]:
        """How a person reaches the server (`status` shows it): host, port, user, database, and where the
        password comes from (``password_env``, ``password_file``), never the password itself."""
        info: dict[str, Any] = {"host": self.source.host, "port": self.source.port, "user": self.source.user,
                                "database": self.source.database}
        variable = self.resolved.env_refs.get("source.password")
        if variable:
            info["password_env"] = variable
        return info

    def stop(self) -> str:
        """Stop the server if bankflow runs it; a line saying what happened."""
        return "nothing to stop: this environment uses external services"

    def destroy(self) -> str:
        """Stop the server bankflow runs and delete its data; a source bankflow does not run is never touched."""
        return "nothing to delete: this environment's source is not bankflow's"

    @property
    def label(self) -> str:
        return "external"

    @property
    def owns_schema(self) -> bool:
        """True when bankflow runs the server and creates its tables (the embedded source)."""
        return False

    def manages(self, item: str) -> bool:
        """May bankflow create or change `item` (publication, replica_identity, heartbeat, signal, slot) here?"""
        return self.owns_schema or item in self.source.manage
