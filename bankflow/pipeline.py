"""`Pipeline`: the library API behind `apply`, `generate`, `verify`, `status`, `down` and `consume`."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bankflow.errors import BankflowError, StageError
from bankflow.spec.loader import ResolvedSpec
from bankflow.stages.base import STAGE_ORDER, Progress, RunContext, StageResult, save_traceback
from bankflow.stopping import stop_on_signals

RUNS_DIR = "runs"


def peak_rss_mb() -> int:
    """This process's peak resident memory so far (Linux reports KiB), recorded after every stage."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

LAST_RUN = "last_run.json"


@dataclass
class RunReport:
    run_id: str
    pipeline: str
    env: str | None
    started_at: str
    stages: list[StageResult] = field(default_factory=list)
    seconds: float = 0.0
    # events this run sent to the dead-letter store, per table (snapshot and stream alike)
    dead_letters: dict[str, int] = field(default_factory=dict)
    verify: Any = None  # the VerifyReport of `apply --verify`

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stages) and (self.verify is None or self.verify.ok)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "pipeline": self.pipeline, "env": self.env, "started_at": self.started_at,
                "ok": self.ok, "seconds": round(self.seconds, 3), "stages": [s.to_dict() for s in self.stages],
                "dead_letters": dict(self.dead_letters),
                "verify": None if self.verify is None else self.verify.to_dict()}


class Pipeline:
    """One spec in one environment. Every method is safe to re-run."""

    def __init__(self, resolved: ResolvedSpec):
        resolved.require_set()  # a spec loaded with unset="defer" holds ${VAR} placeholders, not values
        self.resolved = resolved
        self.spec = resolved.spec

    # ------------------------------------------------------------ apply

    def apply(self, stages: list[str] | None = None, *, follow: bool = False, progress: bool = True,
              verify: bool = False) -> RunReport:
        """Run the stages in order; stop at the first failure. `follow` streams until SIGINT/SIGTERM.
        `verify`: when every stage succeeded, reconcile the source with the warehouse too (`report.verify`)."""
        from bankflow.stages import cdc, load, source, transform

        selected = list(stages or STAGE_ORDER)
        unknown = [s for s in selected if s not in STAGE_ORDER]
        if unknown:
            raise BankflowError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGE_ORDER)}")
        runners = {"source": source.run, "cdc": cdc.run, "load": load.run, "transform": transform.run}
        ctx = RunContext(self.resolved, Progress(progress), follow=follow)
        report = RunReport(uuid.uuid4().hex[:12], self.spec.name, self.resolved.env,
                           dt.datetime.now(dt.timezone.utc).isoformat())
        started = time.monotonic()
        dead_before = self._dead_letter_keys() if "cdc" in selected else None
        with stop_on_signals(ctx.stop):  # the cdc stage flushes its batches, acks and returns
            try:
                for name in STAGE_ORDER:
                    if name not in selected:
                        continue
                    stage_started = time.monotonic()
                    try:
                        result = runners[name](ctx)
                    except BankflowError as exc:
                        result = StageResult(name, ok=False, seconds=time.monotonic() - stage_started,
                                             error=self.resolved.redact(str(exc)))
                    except Exception as exc:  # an unexpected failure: report it, keep the trace
                        if os.environ.get("BANKFLOW_DEBUG"):
                            raise
                        log = save_traceback(self.resolved, f"{report.run_id}-{name}")
                        result = StageResult(name, ok=False, seconds=time.monotonic() - stage_started,
                                             error=self.resolved.redact(f"{type(exc).__name__}: {exc}")
                                             + f" (traceback in {log})")
                    result.details["peak_rss_mb"] = peak_rss_mb()
                    report.stages.append(result)
                    ctx.progress.done(result)
                    if not result.ok:
                        break
                    if follow and name == "cdc":
                        break  # a follow run ends when interrupted; the next apply loads and transforms
                if verify and all(s.ok for s in report.stages):
                    ctx.progress.update("verify", "reconciling the source with the warehouse", force=True)
                    report.verify = self.verify()
            finally:
                report.seconds = time.monotonic() - started
                if dead_before is not None:
                    report.dead_letters = self._dead_letters_since(dead_before)
                self._save_report(report)
                if report.ok:
                    self._save_applied()
        return report

    # ------------------------------------------------------------ run

    def run(self, *, workers: int | None = None, progress: bool = True, metrics_port: int | None = -1,
            stop: Any = None) -> Any:
        """Keep the pipeline current until SIGINT/SIGTERM or `stop` (a threading.Event) is set: stream, load
        on the `run.load` cycle, transform on the `run.transform` cadence (bankflow.runner). `workers`: None =
        the spec's `run.workers`. `metrics_port`: -1 = the spec's `run.metrics.port`, None = no endpoint, 0 = a
        free port. Returns a RunOutcome."""
        from bankflow.runner import PipelineRunner

        workers = self.resolved.spec.run.workers if workers is None else workers
        return PipelineRunner(self.resolved, workers=workers, progress=progress, metrics_port=metrics_port,
                              stop=stop).run()

    def _dead_letter_keys(self) -> set[str] | None:
        """The dead-letter files before a run (None when the lake cannot be read: then nothing is counted)."""
        from bankflow.deadletters import DeadLetters

        try:
            return DeadLetters(self.resolved).keys()
        except Exception:  # an unreachable lake fails the cdc stage itself, with its own message
            return None

    def _dead_letters_since(self, before: set[str]) -> dict[str, int]:
        from bankflow.deadletters import DeadLetters

        try:
            return DeadLetters(self.resolved).new_since(before)
        except Exception:
            return {}

    def deadletters(self) -> Any:
        """The dead-letter store: `pending()`, `iter_records()`, `replay()` (bankflow.deadletters)."""
        from bankflow.deadletters import DeadLetters

        return DeadLetters(self.resolved)

    def _save_report(self, report: RunReport) -> None:
        directory = self.resolved.state_dir / RUNS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report.to_dict(), indent=2, default=str)
        stamp = report.started_at.replace(":", "").replace("-", "")[:15]
        (directory / f"{stamp}-{report.run_id}.json").write_text(text, encoding="utf-8")
        (self.resolved.state_dir / LAST_RUN).write_text(text, encoding="utf-8")

    def _save_applied(self) -> None:
        """What `plan` compares with next time: the artifacts of the last successful apply."""
        import shutil

        from bankflow.plan import APPLIED_DIR, write_files
        from bankflow.render import load_sql_name, render_all

        directory = self.resolved.state_dir / APPLIED_DIR
        shutil.rmtree(directory, ignore_errors=True)
        files = dict(render_all(self.resolved).files)
        files.pop(load_sql_name(self.resolved), None)  # file lists change every run
        write_files(files, directory)

    # ------------------------------------------------------------ generate

    def generate(self, *, seed: int | None = None, rate: float | None = None, duration: float | None = None,
                 transactions: int | None = None, progress: bool = True) -> dict[str, Any]:
        """Run the spec's workload against the source (the source tables are created first)."""
        from bankflow.generate.contract import WorkloadError, WorkloadOptions
        from bankflow.generate.runner import describe, run_workload
        from bankflow.stages import source

        if self.spec.generate is None:
            raise BankflowError("the spec has no generate: section naming a workload")
        once = rate is None and transactions is None and duration is None
        try:  # options first: a bad one is reported before the source is started
            options = WorkloadOptions(seed=seed, once=once, rate=rate, duration=duration, transactions=transactions)
        except WorkloadError as exc:
            raise StageError(str(exc)) from None
        ctx = RunContext(self.resolved, Progress(progress))
        source.run(ctx)
        display = ctx.progress

        def report(info: dict[str, Any]) -> None:  # with done/total when the run's size is known
            display.update("generate", describe(info), done=info.get("done"), total=info.get("total"),
                           unit=info.get("unit", ""))

        try:
            result = run_workload(self.resolved.resolve_path(self.spec.generate.workload),
                                  ctx.source_connect_kwargs(), self.spec.source.schema_name, options, report)
        except WorkloadError as exc:
            raise StageError(str(exc)) from None
        summary = result.as_dict()
        if progress:
            display.done(StageResult("generate", seconds=result.seconds, rows=result.rows))
        return summary

    # ------------------------------------------------------------ verify, status, down, consume

    def verify(self) -> Any:
        # Read-only connections only: the source as a role that can only read (where bankflow runs the server),
        # the warehouse opened read-only by verify itself (nothing is created when it does not exist yet).
        from bankflow.lake.schema_history import evolved_spec
        from bankflow.source import source_server
        from bankflow.verify import verify

        # Compared with the source as it is now: each table in the shape its stream has (spec + accepted changes).
        return verify(evolved_spec(self.resolved), source_server(self.resolved).reader_kwargs(start=True))

    def query(self, sql: str, *, limit: int | None = 1000) -> Any:
        """One read-only SELECT on the warehouse (a bankflow.query.QueryResult): answered by a live `run` that
        holds a DuckDB warehouse, else on a read-only connection opened here."""
        from bankflow.query import query

        return query(self.resolved, sql, limit=limit)

    def status(self) -> dict[str, Any]:
        from bankflow.status import collect_status

        return collect_status(self.resolved)

    def down(self, *, drop_slot: bool = False, destroy: bool = False) -> list[str]:
        """Stop what bankflow runs itself; with `drop_slot` first drop the replication slot (WAL is freed); with
        `destroy` also delete the data of the source bankflow runs (the embedded one; never an external one)."""
        from bankflow.source import source_server

        server = source_server(self.resolved)
        lines = []
        if drop_slot and server.is_running() is False:
            lines.append(f"slot {self.spec.cdc.slot} kept: the {server.label} PostgreSQL is not running")
        elif drop_slot:
            try:
                engine = self.spec.cdc.engine_for(self.resolved)
                if engine.drop_slot(server.connect_kwargs(start=False)):
                    lines.append(f"dropped replication slot {self.spec.cdc.slot}")
                else:
                    lines.append(f"replication slot {self.spec.cdc.slot} does not exist")
            except Exception as exc:
                lines.append(self.resolved.redact(f"slot {self.spec.cdc.slot} not dropped: {exc}"))
        lines.append(server.destroy() if destroy else server.stop())
        return lines

    def backfill(self, table: str, where: str | None = None, *, progress: bool = True) -> dict[str, Any]:
        """Re-read one table from the source while the stream goes on, and load it (`bankflow.engines.builtin
        .backfill`, `bankflow.engines.debezium.backfill`): its rows arrive as op 'r' events ordered against
        concurrent changes. `where` is a condition in the source's SQL (checked: one read-only boolean
        expression). On the built-in engine a running `apply --follow` carries the request out itself
        (``queued``); otherwise this runs the source (its contract check), cdc and load stages."""
        from bankflow.source import source_connect_kwargs

        engine = self.spec.cdc.engine_for(self.resolved)
        if not hasattr(engine, "request_backfill"):
            raise BankflowError(f"`backfill` is not implemented for the {self.spec.cdc.capabilities.label}")
        record = engine.request_backfill(table, where, source_connect_kwargs(self.resolved, start=True))
        result: dict[str, Any] = {"table": table, "where": record.get("where"), "id": record["id"]}
        if record["slot_active"]:
            return {**result, "ok": True, "queued": True,
                    "message": f"a running cdc holds slot {self.spec.cdc.slot}: it backfills {table} within seconds"}
        report = self.apply(stages=["source", "cdc", "load"], progress=progress)
        cdc = next((s for s in report.stages if s.name == "cdc"), None)
        rows = int(cdc.details.get("backfill_rows", 0)) if cdc is not None else 0
        return {**result, "ok": report.ok, "queued": False, "rows": rows, "report": report.to_dict()}

    def consume(self, *, workers: int = 1, follow: bool = False, progress: bool = True) -> dict[str, Any]:
        return self.spec.cdc.engine_for(self.resolved).consume(workers=workers, follow=follow, progress=progress)


def format_status(status: dict[str, Any]) -> str:
    from bankflow.status import format_status as fmt

    return fmt(status)
