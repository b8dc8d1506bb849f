"""Stage `transform`: the spec's dbt steps, in order, in-process through dbt's `dbtRunner`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bankflow.errors import StageError
from bankflow.stages.base import RunContext, StageResult

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec


# No telemetry: dbt's anonymous usage statistics (snowplow events to dbt Labs) are off for every invocation, by
# the environment (what dbt reads whatever the project and profile say) and by the command line (which wins).
NO_TRACKING_ENV = {"DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
NO_TRACKING_ARG = "--no-send-anonymous-usage-stats"


def write_profile(resolved: ResolvedSpec) -> Path:
    """Render the dbt profile into the state dir (secrets stay env_var() references) and export them."""
    from bankflow.render.dbt_profile import render_profile

    profile = render_profile(resolved)
    if profile is None:
        raise StageError("the spec has no transform: section, so there is no dbt profile to write")
    directory = resolved.state_dir / "dbt"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "profiles.yml").write_text(profile, encoding="utf-8")
    # Secrets written in the spec (not taken from a variable) reach dbt through bankflow's own variable names.
    os.environ.update(resolved.spec.warehouse.dbt_environment(resolved))
    os.environ.update(NO_TRACKING_ENV)
    return directory


def dbt_args(resolved: ResolvedSpec, command: str, select: list[str]) -> list[str]:
    transform = resolved.spec.transform
    assert transform is not None
    state = resolved.state_dir / "dbt"
    args = [
        command,
        "--project-dir", str(resolved.resolve_path(transform.project_dir)),
        "--profiles-dir", str(state),
        "--target", resolved.env or "default",
        "--target-path", str(state / "target"),
        "--log-path", str(state / "logs"),
        "--vars", json.dumps({"raw_schema": resolved.spec.warehouse.raw_schema}),
        NO_TRACKING_ARG,
    ]
    if select:
        args += ["--select", *select]
    return args


def _summarise(result: Any) -> dict[str, Any]:
    counts: dict[str, int] = {}
    failures = []
    for node in getattr(result.result, "results", None) or []:
        status = str(getattr(node, "status", "unknown"))
        counts[status] = counts.get(status, 0) + 1
        if status in ("error", "fail"):
            failures.append(f"{node.node.name}: {(node.message or '').strip()[:300]}")
    return {"counts": counts, "failures": failures}


def run(ctx: RunContext) -> StageResult:
    resolved = ctx.resolved
    transform = resolved.spec.transform
    result = StageResult("transform", labels={"rows": "dbt nodes"})  # rows here: models, snapshots, tests run
    started = time.monotonic()
    if transform is None:
        result.details["skipped"] = "the spec has no transform section"
        return result
    ctx.progress.update("transform", "loading dbt", force=True)
    write_profile(resolved)
    from dbt.cli.main import dbtRunner

    runner = dbtRunner()
    steps = []
    for step in transform.steps:
        ctx.progress.update("transform", f"dbt {step.label}", force=True)
        step_started = time.monotonic()
        outcome = runner.invoke([*dbt_args(resolved, step.command, step.select), "--quiet"])
        summary = _summarise(outcome)
        summary.update({"step": step.label, "seconds": round(time.monotonic() - step_started, 2),
                        "success": bool(outcome.success)})
        steps.append(summary)
        result.rows += sum(summary["counts"].values())
        if not outcome.success:
            detail = "; ".join(summary["failures"]) or str(outcome.exception or "see dbt logs")
            result.details["steps"] = steps
            result.seconds = time.monotonic() - started
            raise StageError(f"dbt {step.label} failed: {detail} "
                             f"(logs: {resolved.state_dir / 'dbt' / 'logs'})")
    result.details["steps"] = steps
    result.seconds = time.monotonic() - started
    return result
