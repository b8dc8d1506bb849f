"""The dbt profile for the chosen environment. Secrets appear only as `env_var()` references."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from bankflow.render.templating import render_template
from bankflow.spec.models import SnowflakeWarehouse

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec

PASSWORD_VAR = "BANKFLOW_WAREHOUSE_PASSWORD"
PASSPHRASE_VAR = "BANKFLOW_WAREHOUSE_KEY_PASSPHRASE"


def secret_env_var(resolved: ResolvedSpec, field: str, fallback: str) -> str:
    """The variable a secret came from, or bankflow's own name that the transform stage exports."""
    return resolved.env_refs.get(field) or fallback


def profile_output(resolved: ResolvedSpec) -> dict[str, object]:
    spec = resolved.spec
    assert spec.transform is not None
    warehouse = spec.warehouse
    output: dict[str, object]
    if isinstance(warehouse, SnowflakeWarehouse):
        output = {
            "type": "snowflake",
            "account": warehouse.account,
            "user": warehouse.user,
            "database": warehouse.database,
            "warehouse": warehouse.warehouse,
            "schema": spec.transform.target_schema,
            "threads": spec.transform.threads,
        }
        if warehouse.role:
            output["role"] = warehouse.role
        if warehouse.authenticator == "key_pair":
            output["private_key_path"] = warehouse.private_key_path
            if warehouse.private_key_passphrase:
                var = secret_env_var(resolved, "warehouse.private_key_passphrase", PASSPHRASE_VAR)
                output["private_key_passphrase"] = "{{ env_var('" + var + "') }}"
        else:
            var = secret_env_var(resolved, "warehouse.password", PASSWORD_VAR)
            output["password"] = "{{ env_var('" + var + "') }}"
        output.update(warehouse.endpoint_overrides())
    else:
        output = {
            "type": "duckdb",
            "path": str(resolved.resolve_path(warehouse.path)),
            "schema": spec.transform.target_schema,
            "threads": spec.transform.threads,
        }
    return output


def render_profile(resolved: ResolvedSpec) -> str:
    output = {k: json.dumps(v) if isinstance(v, str) else v for k, v in profile_output(resolved).items()}
    return render_template("dbt/profiles.yml.j2", spec_file=resolved.path.name, env=resolved.env or "default",
                           target=resolved.env or "default", output=output)
