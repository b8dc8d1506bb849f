"""`plan`: render every artifact, write them, and show what changed against the last plan or applied state."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from bankflow.render import load_sql_name, render_all
from bankflow.render.airflow import dag_file_name, render_dag
from bankflow.spec.loader import ResolvedSpec

APPLIED_DIR = "applied"
# What a plan directory holds. Other files there are not the plan's: never reported as removed, never deleted.
ARTIFACT_RE = re.compile(
    r"^(debezium/[^/]+\.json|topology\.json|dbt/profiles\.yml|warehouse/[a-z0-9_]+/[a-z0-9_]+\.sql"
    r"|source/setup\.sql|airflow/[^/]+\.py)$")
# Pending-file lists change with every run: apply does not record them, so they are not compared with it.
LOAD_SQL_RE = re.compile(r"^warehouse/[a-z0-9_]+/load\.sql$")
# Nor does it deploy the Airflow DAG (the scheduler's, not bankflow's): plan writes it, apply leaves it alone.
NOT_APPLIED_RE = re.compile(rf"{LOAD_SQL_RE.pattern}|^airflow/[^/]+\.py$")


@dataclass
class PlanResult:
    files: dict[str, str]
    compared_with: Path | None = None
    changed: dict[str, str] = field(default_factory=dict)  # file -> unified diff ("" for new/removed)
    notes: list[str] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return bool(self.changed)


def _diff(name: str, old: str | None, new: str | None) -> str:
    return "".join(difflib.unified_diff(
        (old or "").splitlines(keepends=True), (new or "").splitlines(keepends=True),
        fromfile=f"a/{name}", tofile=f"b/{name}"))


def _previous(directory: Path) -> dict[str, Path]:
    files = {p.relative_to(directory).as_posix(): p for p in directory.rglob("*") if p.is_file()}
    return {name: path for name, path in files.items() if ARTIFACT_RE.match(name)}


def compare(files: dict[str, str], directory: Path, *, ignore: re.Pattern[str] | None = None) -> dict[str, str]:
    """file -> diff for every artifact that differs from `directory`'s (new, changed or no longer rendered)."""
    changed = {}
    previous = _previous(directory)
    for name, text in files.items():
        if ignore is not None and ignore.match(name):
            continue
        old = previous[name].read_text(encoding="utf-8") if name in previous else None
        if old != text:
            changed[name] = _diff(name, old, text)
    for name in sorted(set(previous) - set(files)):
        if ignore is None or not ignore.match(name):
            changed[name] = _diff(name, previous[name].read_text(encoding="utf-8"), None)
    return changed


def plan(resolved: ResolvedSpec, out: Path | None = None, *, pending_files: dict[str, list[str]] | None = None,
         check_live: bool = True) -> PlanResult:
    """Render everything; compare with `out` (an earlier plan) or else the last applied state; then write."""
    files = dict(render_all(resolved).files)
    files[dag_file_name(resolved)] = resolved.redact(render_dag(resolved))
    if pending_files is not None:
        from bankflow.render.warehouse import render_load_sql

        files[load_sql_name(resolved)] = render_load_sql(resolved, pending_files)
    result = PlanResult(files)
    for candidate in ([out] if out else []) + [resolved.state_dir / APPLIED_DIR]:
        if candidate is not None and candidate.is_dir() and _previous(candidate):
            result.compared_with = candidate
            result.changed = compare(files, candidate, ignore=None if candidate == out else NOT_APPLIED_RE)
            break
    if check_live:
        diff, note = resolved.spec.cdc.engine_for(resolved).live_diff()
        if note:
            result.notes.append(note)
        if diff:
            result.changed["live deployment"] = diff
        result.notes += source_contract_notes(resolved)
    else:
        result.notes.append("offline: the source contract (live catalog vs spec) was not checked")
    if out is not None:
        write_files(files, out)
    return result


def source_contract_notes(resolved: ResolvedSpec) -> list[str]:
    """The source contract as plan notes: each difference with the spec's file:line, or why it was not checked."""
    from bankflow.source import source_server
    from bankflow.source.contract import check_contract

    server = source_server(resolved)
    if server.is_running() is False:
        return ["the source is not running: the source contract (live catalog vs spec) was not checked"]
    try:
        findings = check_contract(resolved, server.connect_kwargs(start=False))
    except Exception as exc:  # unreachable, no such database, no permission: plan goes on
        reason = " ".join(resolved.redact(str(exc)).split()) or type(exc).__name__
        return [f"the source is not reachable ({reason}): the source contract was not checked"]
    if not findings:
        return ["source contract: the live catalog matches the spec's tables"]
    return [f"source contract {f.severity}: {f}" for f in findings]


def write_files(files: dict[str, str], directory: Path) -> None:
    """Write the artifacts; remove artifacts an earlier plan wrote that are no longer rendered (e.g. another
    environment's warehouse SQL), so the directory is exactly this plan and the next run can say "no changes"."""
    for name, path in _previous(directory).items() if directory.is_dir() else ():
        if name not in files:
            path.unlink()
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
