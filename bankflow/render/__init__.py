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


def render_all(resolved: ResolvedSpec) -> Artifacts:
    """All artifacts for display and for `plan --out`: secrets redacted, file lists as placeholders."""
    from bankflow.render.dbt_profile import render_profile
    from bankflow.render.debezium import render_connector_json
    from bankflow.render.topology import render_topology_json
    from bankflow.render.warehouse import render_load_sql, render_setup_sql

    files = {
        "debezium/connector.json": render_connector_json(resolved, reveal=False),
        "topology.json": render_topology_json(resolved),
        "dbt/profiles.yml": render_profile(resolved),
        f"warehouse/{resolved.spec.warehouse.type}/setup.sql": render_setup_sql(resolved, reveal=False),
        f"warehouse/{resolved.spec.warehouse.type}/load.sql": render_load_sql(resolved, None),
    }
    return Artifacts(files)
