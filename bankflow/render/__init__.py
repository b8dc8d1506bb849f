"""Pure renderers: a resolved spec in, artifact text out. No service is contacted here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec


@dataclass(frozen=True)
class Artifacts:
    """Every rendered artifact of a plan, by relative file name (what `bankflow plan --out` writes)."""

    files: dict[str, str] = field(default_factory=dict)


def warehouse_dir(resolved: ResolvedSpec) -> str:
    return f"warehouse/{resolved.spec.warehouse.dialect().name}"


def load_sql_name(resolved: ResolvedSpec) -> str:
    """The plan file of pending load statements (its file lists change every run, so apply does not keep it)."""
    return f"{warehouse_dir(resolved)}/load.sql"


SOURCE_SETUP_SQL = "source/setup.sql"


def render_source_setup(resolved: ResolvedSpec) -> str:
    """source/setup.sql: what bankflow needs on the source (for a source it does not run: no CREATE TABLE)."""
    from bankflow.source import source_server
    from bankflow.source.ddl import setup_sql

    server = source_server(resolved)  # not started: only asked whether bankflow owns the schema
    return setup_sql(resolved, owns_schema=server.owns_schema, manage=list(resolved.spec.source.manage))


def render_all(resolved: ResolvedSpec) -> Artifacts:
    """All artifacts for display and for `plan --out`: secrets redacted, file lists as placeholders.

    The engine adds its own (the Debezium connector JSON); a spec without `transform:` has no dbt profile;
    source/setup.sql is every statement bankflow needs on the source.
    """
    from bankflow.render.dbt_profile import render_profile
    from bankflow.render.topology import render_topology_json
    from bankflow.render.warehouse import render_load_sql, render_setup_sql

    files = dict(resolved.spec.cdc.engine_for(resolved).artifacts())
    files["topology.json"] = render_topology_json(resolved)
    profile = render_profile(resolved)
    if profile is not None:
        files["dbt/profiles.yml"] = profile
    files[f"{warehouse_dir(resolved)}/setup.sql"] = render_setup_sql(resolved, reveal=False)
    files[SOURCE_SETUP_SQL] = render_source_setup(resolved)
    files[load_sql_name(resolved)] = render_load_sql(resolved, None)
    # Whatever a renderer let through (e.g. URL user-info in an endpoint) is still a secret: redact every file.
    return Artifacts({name: resolved.redact(text) for name, text in files.items()})
