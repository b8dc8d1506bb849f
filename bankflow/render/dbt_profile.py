"""The dbt profile for the chosen environment. Secrets appear only as `env_var()` references.

The output mapping is the warehouse config's own (`WarehouseConfig.dbt_profile`); a spec without `transform:`
has no dbt profile.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bankflow.render.templating import render_template

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec


def profile_output(resolved: ResolvedSpec) -> dict[str, Any] | None:
    transform = resolved.spec.transform
    if transform is None:
        return None
    return resolved.spec.warehouse.dbt_profile(resolved, transform)


def render_profile(resolved: ResolvedSpec) -> str | None:
    """The profiles.yml text, or None when the spec has no transform section."""
    output = profile_output(resolved)
    if output is None:
        return None
    # A variable left unset (load_spec(unset="defer"), e.g. an offline plan) is dbt's reference to it, not a value.
    deferred = {f"${{{name}}}": "{{ env_var('" + name + "') }}" for name in resolved.unset}
    quoted = {k: json.dumps(deferred.get(v, v)) if isinstance(v, str) else v for k, v in output.items()}
    return render_template("dbt/profiles.yml.j2", spec_file=resolved.path.name, env=resolved.env or "default",
                           target=resolved.env or "default", output=quoted,
                           profile_config=not project_has_flags(resolved))


def project_has_flags(resolved: ResolvedSpec) -> bool:
    """True when the dbt project's dbt_project.yml has `flags:`.

    dbt (1.10, 1.11) reads its flags, `send_anonymous_usage_stats` among them, from `flags:` in dbt_project.yml, or
    else from the deprecated `config:` of profiles.yml, and refuses both at once. So the profile turns usage
    statistics off itself only for a project without `flags:`; bankflow's own projects carry
    `flags: {send_anonymous_usage_stats: false}`, and the transform stage turns them off on every invocation.
    """
    import yaml

    transform = resolved.spec.transform
    if transform is None:
        return False
    path = resolved.resolve_path(transform.project_dir) / "dbt_project.yml"
    try:
        project = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # dbt reads no flags from it either
    return isinstance(project, dict) and "flags" in project
