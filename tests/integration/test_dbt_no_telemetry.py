"""No telemetry: dbt's anonymous usage statistics are off in every dbt invocation bankflow makes, and by the
rendered profile or the project's `flags:` for a dbt run by hand. Read back from dbt itself after a real
(in-process, dbtRunner) invocation built the way the transform stage builds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bankflow.render.dbt_profile import project_has_flags
from bankflow.spec.loader import load_spec
from bankflow.stages.transform import NO_TRACKING_ARG, NO_TRACKING_ENV, dbt_args, write_profile
from tests.specs.support import MINIMAL, REPO, copy_spec

pytestmark = pytest.mark.integration

dbt_main = pytest.importorskip("dbt.cli.main")
pytest.importorskip("dbt.adapters.duckdb")


def _spec(tmp_path: Path) -> Path:
    """tests/specs/minimal.yaml and its dbt project, with the `raw` source the warehouse would declare."""
    spec = copy_spec(MINIMAL, tmp_path)
    (tmp_path / "minimal_dbt" / "models" / "sources.yml").write_text(
        "version: 2\nsources:\n  - name: raw\n    schema: \"{{ var('raw_schema') }}\"\n    tables: [{name: items}]\n",
        encoding="utf-8")
    return spec


def _invoke(args: list[str]) -> dict[str, object]:
    """Run dbt in-process; what its own flags and tracker say afterwards."""
    import dbt.flags
    import dbt.tracking

    outcome = dbt_main.dbtRunner().invoke([*args, "--quiet"])
    assert outcome.success, outcome.exception
    user = dbt.tracking.active_user
    return {"flag": dbt.flags.get_flags().SEND_ANONYMOUS_USAGE_STATS,
            "do_not_track": user is None or user.do_not_track, "cookie_dir": getattr(user, "cookie_dir", None)}


def _no_tracking_trace(state_dbt: Path) -> None:
    assert not (state_dbt / ".user.yml").exists()  # dbt's tracking cookie: only written when tracking
    log = (state_dbt / "logs" / "dbt.log").read_text(encoding="utf-8", errors="replace").lower()
    assert "snowplow" not in log and "sending event" not in log and "tracking" not in log.replace(
        "do not track", "")


def test_transform_stage_invocation_sends_no_usage_statistics(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBT_SEND_ANONYMOUS_USAGE_STATS", raising=False)
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    resolved = load_spec(_spec(tmp_path), environ={})
    state_dbt = write_profile(resolved)  # what the transform stage does first: profile + environment
    assert {k: os.environ.get(k) for k in NO_TRACKING_ENV} == NO_TRACKING_ENV
    args = dbt_args(resolved, "parse", [])
    assert NO_TRACKING_ARG in args
    assert _invoke(args) == {"flag": False, "do_not_track": True, "cookie_dir": None}
    _no_tracking_trace(state_dbt)


def test_project_flags_alone_turn_usage_statistics_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-run `dbt` with the rendered profile (no bankflow environment, no bankflow argument)."""
    resolved = load_spec(_spec(tmp_path), environ={})
    assert project_has_flags(resolved)
    state_dbt = write_profile(resolved)
    monkeypatch.delenv("DBT_SEND_ANONYMOUS_USAGE_STATS", raising=False)
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    args = [a for a in dbt_args(resolved, "parse", []) if a != NO_TRACKING_ARG]
    assert _invoke(args)["flag"] is False
    _no_tracking_trace(state_dbt)


def test_the_profile_turns_them_off_for_a_project_without_flags(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path)
    project = tmp_path / "minimal_dbt" / "dbt_project.yml"
    text = project.read_text(encoding="utf-8")
    project.write_text(text[: text.index("# No telemetry")], encoding="utf-8")
    resolved = load_spec(spec, environ={})
    assert not project_has_flags(resolved)
    state_dbt = write_profile(resolved)
    assert "config:\n  send_anonymous_usage_stats: false\n" in (state_dbt / "profiles.yml").read_text()
    monkeypatch.delenv("DBT_SEND_ANONYMOUS_USAGE_STATS", raising=False)
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    args = [a for a in dbt_args(resolved, "parse", []) if a != NO_TRACKING_ARG]
    assert _invoke(args)["flag"] is False
    _no_tracking_trace(state_dbt)


@pytest.mark.parametrize("project", ["banking_dbt", "tests/specs/minimal_dbt", "tests/specs/inventory_dbt"])
def test_every_bankflow_dbt_project_has_the_flag_off(project: str) -> None:
    import yaml

    flags = yaml.safe_load((REPO / project / "dbt_project.yml").read_text(encoding="utf-8"))["flags"]
    assert flags["send_anonymous_usage_stats"] is False
