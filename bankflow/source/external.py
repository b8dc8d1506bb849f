"""A Postgres that somebody else runs: bankflow only connects to it."""

from __future__ import annotations

from typing import Any

from bankflow.source.base import PostgresServer


class ExternalPostgres(PostgresServer):
    def server_kwargs(self, *, start: bool) -> dict[str, Any]:
        del start  # somebody else runs it
        source = self.source
        kwargs: dict[str, Any] = {"host": source.host, "port": source.port, "user": source.user,
                                  "dbname": source.database, "sslmode": source.sslmode}
        if source.password:
            kwargs["password"] = source.password
        return kwargs
