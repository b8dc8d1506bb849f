"""Stage `transform`: the spec's dbt steps, in order, in-process through dbt's `dbtRunner`.

`Transformer` is what a long-running process keeps between cycles, to cut dbt's fixed cost of each one:
- the project is parsed once (`dbt parse`, partial parsing on, its state in the state dir so it is kept between
  processes too) and the manifest reused by every invocation, parsed again when a project file changes (mtimes);
- given the raw tables that got rows since the last transform, each spec step runs with its selection narrowed to
  the nodes downstream of those raw sources (models, snapshots and their tests), and a cycle in which nothing
  changed runs no dbt at all (reported as skipped);
- on DuckDB, the file is held (waiting politely for another process's lock) only for the cycle: dbt-duckdb's
  connection, which it keeps open by default, is closed when the cycle ends.
The spec's steps and their order stay the contract: a step whose selection is narrowed to nothing still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bankflow.errors import StageError
from bankflow.stages.base import RunContext, StageResult

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import DbtStep


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


def dbt_args(resolved: ResolvedSpec, command: str, select: list[str],
             extra_vars: dict[str, Any] | None = None) -> list[str]:
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
        "--vars", json.dumps({"raw_schema": resolved.spec.warehouse.raw_schema, **(extra_vars or {})}),
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


# Folders of a dbt project whose files are dbt's output, not its input: a change there is no reason to parse again.
_NOT_PROJECT = {"target", "logs", "dbt_packages_tmp", "__pycache__"}


def project_fingerprint(project_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """Every project file's path, mtime and size: when this changes, the manifest is parsed again."""
    files = []
    for root, dirs, names in os.walk(project_dir):
        dirs[:] = sorted(d for d in dirs if d not in _NOT_PROJECT and not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            path = Path(root) / name
            try:
                stat = path.stat()
            except OSError:
                continue  # removed while walking: the next cycle sees it gone
            files.append((path.relative_to(project_dir).as_posix(), stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(files))


def narrowed(step: DbtStep, sources: list[str]) -> list[str]:
    """The step's selection intersected with "downstream of these sources" (dbt: `a,b` is an intersection)."""
    downstream = [f"source:{source}+" for source in sources]
    if not step.select:
        return downstream
    return [f"{selector},{d}" for selector in step.select for d in downstream]


class Transformer:
    """The spec's dbt steps, for a process that transforms many times (see the module's docstring).

    `run(ctx, changed_tables)`: `changed_tables` are the raw table names that got rows since the last transform
    (None: unknown, transform everything). Tables of a failed cycle stay pending for the next one, and the first
    cycle of a Transformer, or the first after a project file changed, transforms everything (a previous
    process may have stopped between a load and its transform). `close()` releases the manifest and the file.
    """

    def __init__(self, resolved: ResolvedSpec) -> None:
        self.resolved = resolved
        self.manifest: Any = None
        self._fingerprint: tuple[tuple[str, int, int], ...] | None = None
        self._pending: set[str] | None = None  # raw tables not transformed yet; None = everything
        self._profile = False
        self._busy = threading.Lock()  # one cycle at a time, whoever calls

    # ------------------------------------------------------------ parsing
    def _dbt_args(self, command: str, select: list[str], *, changed_only: bool = False,
                  raw_position: int | None = None) -> list[str]:
        """`changed_only`: a cycle narrowed to what changed, so tests that can (`bankflow_unique`) check only
        the keys the models' latest builds wrote (var bankflow_tests). `raw_position`: the ledger position every
        model of the cycle reads raw up to (var bankflow_raw_position, macros/bankflow/incremental.sql)."""
        extra: dict[str, Any] = {"bankflow_tests": "changed"} if changed_only else {}
        if raw_position is not None:
            extra["bankflow_raw_position"] = raw_position
        return [*dbt_args(self.resolved, command, select, extra_vars=extra or None), "--quiet"]

    def _ensure_manifest(self, result: StageResult) -> None:
        """Parse when there is no manifest yet or a project file changed since the last parse."""
        transform = self.resolved.spec.transform
        assert transform is not None
        fingerprint = project_fingerprint(self.resolved.resolve_path(transform.project_dir))
        if self.manifest is not None and fingerprint == self._fingerprint:
            return
        from dbt.cli.main import dbtRunner

        started = time.monotonic()
        # --partial-parse whatever DBT_PARTIAL_PARSE says: its state (target/partial_parse.msgpack) lives in the
        # state dir, so a new process re-reads only the files that changed.
        outcome = dbtRunner().invoke([*self._dbt_args("parse", []), "--partial-parse"])
        result.details["parse_seconds"] = round(time.monotonic() - started, 2)
        if not outcome.success or outcome.result is None:
            self.manifest = None
            raise StageError(f"dbt parse failed: {outcome.exception or 'see dbt logs'} "
                             f"(logs: {self.resolved.state_dir / 'dbt' / 'logs'})")
        if self._fingerprint is not None:
            self._pending = None  # models changed: rebuild everything once
        self.manifest = outcome.result
        self._fingerprint = fingerprint

    def sources_reading(self, tables: set[str]) -> list[str]:
        """The dbt sources (`source_name.table_name`) over these raw tables, from the manifest."""
        raw_schema = self.resolved.spec.warehouse.raw_schema.lower()
        wanted = {t.lower() for t in tables}
        found = set()
        for source in getattr(self.manifest, "sources", {}).values():
            relation = (source.identifier or source.name or "").lower()
            if (source.schema or "").lower() == raw_schema and relation in wanted:
                found.add(f"{source.source_name}.{source.name}")
        return sorted(found)

    # ------------------------------------------------------------ the file
    @contextlib.contextmanager
    def _warehouse_held(self, result: StageResult) -> Iterator[None]:
        """What the warehouse needs held for a cycle (DuckDB: its file, waiting for another process's lock)."""
        with self.resolved.spec.warehouse.held_for_transform(self.resolved) as waited:
            if waited >= 0.5:
                result.details["lock_wait_seconds"] = round(waited, 2)
            yield

    # ------------------------------------------------------------ a cycle
    def run(self, ctx: RunContext, changed_tables: set[str] | None = None,
            raw_position: int | None = None) -> StageResult:
        """One cycle. `raw_position` (a ledger load_seq): read raw only up to it, for a caller that loads raw
        while dbt runs (`bankflow run`); None reads raw as it is at each model's start."""
        with self._busy:
            return self._run(ctx, changed_tables, raw_position)

    def _run(self, ctx: RunContext, changed_tables: set[str] | None, raw_position: int | None) -> StageResult:
        resolved = self.resolved
        transform = resolved.spec.transform
        result = StageResult("transform", labels={"rows": "dbt nodes"})  # rows here: models, snapshots, tests run
        started = time.monotonic()
        if transform is None:
            result.details["skipped"] = "the spec has no transform section"
            return result
        if changed_tables is None:
            self._pending = None
        elif self._pending is not None:
            self._pending |= set(changed_tables)
        pending = None if self._pending is None else set(self._pending)
        if pending is not None and not pending and self.manifest is not None \
                and self._fingerprint == project_fingerprint(resolved.resolve_path(transform.project_dir)):
            result.details["skipped"] = "no new rows in raw since the last transform"
            result.seconds = time.monotonic() - started
            return result
        ctx.progress.update("transform", "loading dbt", force=True)
        if not self._profile:
            write_profile(resolved)
            self._profile = True
        self._ensure_manifest(result)
        pending = None if self._pending is None else set(self._pending)
        sources: list[str] | None = None
        if pending is not None:
            sources = self.sources_reading(pending)
            result.details["changed_tables"] = sorted(pending)
            if not sources:
                self._pending = set()
                result.details["skipped"] = "no dbt source reads the raw tables that changed"
                result.seconds = time.monotonic() - started
                return result
        if raw_position is not None:
            result.details["raw_position"] = raw_position
        from dbt.cli.main import dbtRunner

        runner = dbtRunner(manifest=self.manifest)
        steps = []
        with self._warehouse_held(result):
            for step in transform.steps:
                ctx.progress.update("transform", f"dbt {step.label}", force=True)
                step_started = time.monotonic()
                select = step.select if sources is None else narrowed(step, sources)
                outcome = runner.invoke(self._dbt_args(step.command, select, changed_only=sources is not None,
                                                       raw_position=raw_position))
                summary = _summarise(outcome)
                summary.update({"step": step.label, "seconds": round(time.monotonic() - step_started, 2),
                                "success": bool(outcome.success)})
                if sources is not None:
                    summary["select"] = select
                steps.append(summary)
                result.rows += sum(summary["counts"].values())
                if not outcome.success:
                    detail = "; ".join(summary["failures"]) or str(outcome.exception or "see dbt logs")
                    result.details["steps"] = steps
                    result.seconds = time.monotonic() - started
                    raise StageError(f"dbt {step.label} failed: {detail} "
                                     f"(logs: {resolved.state_dir / 'dbt' / 'logs'})")
        self._pending = set()
        result.details["steps"] = steps
        result.seconds = time.monotonic() - started
        return result

    def close(self) -> None:
        """Forget the manifest and make sure this process no longer holds the warehouse file."""
        with self._busy:
            self.manifest = None
            self._fingerprint = None
            self._pending = None
            self.resolved.spec.warehouse.release_dbt()


def run(ctx: RunContext) -> StageResult:
    """The stage `apply` runs: every step of the spec, everything selected, then the file is released."""
    transformer = Transformer(ctx.resolved)
    try:
        return transformer.run(ctx)
    finally:
        transformer.close()
