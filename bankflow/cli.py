"""The `bankflow` command: a thin layer over the library API.

Exit codes: 0 success, 1 invalid spec or failed stage/check (or an internal error), 2 usage, 3 `plan` found
differences, 130 interrupted, 141 stdout closed early (`bankflow schema | head`).

Nothing a user can type ends in a traceback: errors bankflow raises on purpose are one line each; anything else is
one line naming the exception, with the full trace written to a file (shown with -v, or raised with
BANKFLOW_DEBUG=1). Every command takes -v/--verbose (repeatable) and -q/--quiet, before or after its name.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bankflow import log as bankflow_log
from bankflow.errors import BankflowError, Issue, SpecError, UsageError
from bankflow.spec.loader import ResolvedSpec, load_spec

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DIFFERS = 0, 1, 2, 3
# apply finished, but events went to the dead-letter store (or status: something needs a person)
EXIT_DEAD_LETTERS = EXIT_ATTENTION = 4
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141
STAGES = ("source", "cdc", "load", "transform")  # bankflow.stages.base.STAGE_ORDER, without importing stages

log = logging.getLogger("bankflow.cli")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: what is wrong and where to look."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive(kind: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _positive(int, "a whole number")
positive_float = _positive(float, "a number")


def stage_list(text: str) -> list[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {', '.join(repr(s) for s in unknown) or repr(text)}; "
            f"give a comma-separated subset of {','.join(STAGES)}")
    return stages


def _name_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated table names, got {text!r}")
    return names


def _add_spec(parser: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        parser.add_argument("specs", nargs="+", metavar="SPEC", help="pipeline YAML file(s)")
    else:
        parser.add_argument("spec", metavar="SPEC", help="pipeline YAML file, e.g. pipelines/banking.yaml")
    parser.add_argument("--env", "-e", default=None,
                        help="environment overlay from the spec's environments: (default: the spec's default_env)")


def _output_options(dest_suffix: str = "") -> argparse.ArgumentParser:
    """-v/-q for the top-level parser and for every command (both places count)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="count", default=0, dest="verbose" + dest_suffix,
                       help="more messages: -v info with timestamps (and tracebacks of internal errors), "
                       "-vv debug")
    group.add_argument("-q", "--quiet", action="store_true", dest="quiet" + dest_suffix,
                       help="errors only, no progress display")
    group.add_argument("--log-format", choices=bankflow_log.FORMATS, default=None, dest="log_format" + dest_suffix,
                       help="text (default, for people) or json: one JSON object per line on stderr, no "
                       "progress display")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bankflow", parents=[_output_options("_global")],
        description="Declarative CDC pipelines: PostgreSQL → CDC → Kafka → Parquet lake → warehouse raw → dbt.",
    )
    parser.add_argument("--version", action="version", version="bankflow 0.1.0")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    output: list[argparse.ArgumentParser] = [_output_options()]

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=output, **kwargs)  # type: ignore[arg-type]

    p = command("validate", help="check spec files (fast; for CI)",
                description="Validate spec files: types, identifiers, references, dbt selectors. A variable "
                "that is not set is a note (apply needs it), not an error, unless the value must be typed.")
    _add_spec(p, many=True)
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    p.add_argument("--format", choices=["text", "github"], default="text",
                   help="github: workflow annotations (::error file=…,line=…::…)")

    p = command("plan", help="render every artifact and show what changed",
                description="Render the Debezium connector config, warehouse SQL, consumer topology "
                "and dbt profile; compare with the previous plan in --out or the last applied state. "
                "Exit 3 when something differs. With --offline, unset variables are notes and render as "
                "references (${env:VAR}, env_var('VAR')).")
    _add_spec(p)
    p.add_argument("--out", type=Path, help="directory to write the artifacts to (created if missing)")
    p.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    p.add_argument("--offline", action="store_true", help="do not contact Kafka Connect or the lake")

    command("schema", help="print the spec's JSON Schema (for editors)",
            description="Print the JSON Schema of pipeline specs.")

    p = command("apply", help="run the pipeline: source → cdc → consume → load → transform",
                description="Run the stages in order; idempotent. Catches up to the source's current "
                "position and stops, unless --follow. Exit 1 when a stage failed; exit 4 when every stage ran but "
                "events went to the dead-letter store (per table on stderr; see 'bankflow deadletters'), unless "
                "--accept-dead-letters.")
    _add_spec(p)
    p.add_argument("--stages", type=stage_list, help=f"comma-separated subset of: {','.join(STAGES)}")
    p.add_argument("--follow", action="store_true", help="keep streaming until SIGINT/SIGTERM (then flush)")
    p.add_argument("--accept-dead-letters", action="store_true",
                   help="exit 0 even when events went to the dead-letter store (they are still reported)")
    p.add_argument("--verify", action="store_true",
                   help="when every stage succeeded, run verify too (exit 1 when it finds a difference)")
    p.add_argument("--json", action="store_true", help="print the run report as JSON")

    p = command("run", help="keep the pipeline current: stream, load on a cycle, transform on a cadence",
                description="One long-running process: the cdc stage streams into the lake (as apply --follow), "
                "new lake files are loaded into raw on the spec's run.load cycle, and the dbt steps run on "
                "run.transform's cadence (an interval or cron expression, or after N changes), one at a time. "
                "Serves Prometheus metrics (run.metrics) and writes <state_dir>/run_state.json for status. "
                "SIGINT/SIGTERM: flush, acknowledge, load what is pending, exit; a kill -9 loses nothing (the "
                "next run resumes). Exit 1 when the stream failed or the last transform failed; exit 4 when "
                "events went to the dead-letter store.")
    _add_spec(p)
    p.add_argument("--workers", type=positive_int,
                   help="consumer processes in the spec's group (Kafka environments; default run.workers, 1)")
    metrics = p.add_mutually_exclusive_group()
    metrics.add_argument("--metrics-port", type=int, help="listen on this port instead of run.metrics.port "
                         "(0 = a free port, printed)")
    metrics.add_argument("--no-metrics", action="store_true", help="serve no metrics endpoint")
    p.add_argument("--accept-dead-letters", action="store_true",
                   help="exit 0 even when events went to the dead-letter store (they are still reported)")
    p.add_argument("--json", action="store_true", help="print what the run did as JSON when it ends")

    p = command("generate", help="write a realistic workload into the source database",
                description="Run the spec's workload (generate.workload) against the source.")
    _add_spec(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one modest iteration (the default)")
    mode.add_argument("--rate", type=positive_float, help="business transactions per second (with --duration)")
    mode.add_argument("--transactions", type=positive_int, help="bulk: insert this many transaction rows, fast")
    p.add_argument("--duration", type=positive_float, help="seconds to run at --rate")
    p.add_argument("--seed", type=int, help="random seed: the same seed on a fresh source gives the same data")
    p.add_argument("--json", action="store_true")

    p = command("verify", help="reconcile source and warehouse; exit 1 on any difference",
                description="Compare the source with the warehouse: row counts and keys per table "
                "(latest state from raw), and the spec's verify checks.")
    _add_spec(p)
    p.add_argument("--json", action="store_true")

    p = command("query", help="one read-only SELECT on the warehouse, also while run runs",
                description="Run one read-only SELECT on the spec's warehouse and print its rows. While "
                "`bankflow run` holds a DuckDB warehouse (which refuses readers in other processes), the run "
                "answers the query itself from its last committed load or transform. The SQL is checked like "
                "verify's queries: one SELECT that only reads tables.")
    _add_spec(p)
    p.add_argument("sql", metavar="SQL", help="the SELECT; '-' reads it from stdin")
    p.add_argument("--limit", type=int, default=1000, help="at most this many rows (default 1000; 0: all)")
    p.add_argument("--json", action="store_true", help="columns, rows (exact values as text) and truncated")

    p = command("status", help="services, slot lag, lake and raw counts, last run",
                description="Show the pipeline's state. Exit 4 when something needs a person: the source "
                "unreachable, source contract drift, slot lag over cdc.max_lag_bytes, dead letters pending, the "
                "connector or a task not running, an unreadable lake or warehouse, a failed last run.")
    _add_spec(p)
    p.add_argument("--json", action="store_true")

    p = command("down", help="stop the embedded services apply started",
                description="Stop embedded services (the data stays; apply restarts them).")
    _add_spec(p)
    p.add_argument("--drop-slot", action="store_true",
                   help="also drop the replication slot (otherwise it keeps WAL for the next run)")
    p.add_argument("--destroy", action="store_true",
                   help="also delete the embedded source's data (a fresh apply starts over); never an external "
                        "source")

    p = command("consume", help="run Kafka consumer workers into the lake (stack)",
                description="Consume the spec's topics into the lake with N worker processes.")
    _add_spec(p)
    p.add_argument("--workers", type=positive_int, default=1, help="consumer processes (default 1)")
    p.add_argument("--follow", action="store_true", help="keep consuming until interrupted")
    p.add_argument("--json", action="store_true")
    p = command("deadletters", help="list, show or replay the events in the dead-letter store",
                description="list: pending dead letters per table with their reasons. show: the events, with "
                "position and reason. replay: decode them again with the current spec into lake files keyed "
                "by their positions (the next load loads them once; a second replay writes nothing new); what "
                "still does not convert stays, with this attempt's reason. Exit 4 when dead letters remain.")
    _add_spec(p)
    p.add_argument("action", choices=["list", "show", "replay"])
    p.add_argument("--table", help="one table of the spec (default: all)")
    p.add_argument("--limit", type=positive_int, default=20, help="show: at most this many events (default 20)")
    p.add_argument("--json", action="store_true")

    p = command("backfill", help="re-read one table from the source while the stream goes on",
                description="Backfill TABLE: read its rows in primary-key chunks between watermarks while "
                "changes keep streaming (each row arrives once, ordered against concurrent changes), then load "
                "them. --where is a condition in the source's SQL on your own table (e.g. \"id > 1000\"), run "
                "read-only inside each chunk's SELECT; anything but one boolean expression is refused. A running "
                "`apply --follow` carries the request out itself. Built-in engine only for now. Exit 0 done or "
                "queued, 1 failed or refused, 4 when events went to the dead-letter store.")
    _add_spec(p)
    p.add_argument("--table", required=True, help="the spec table to re-read")
    p.add_argument("--where", help="only rows matching this condition (PostgreSQL syntax)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = command("init", help="scaffold a pipeline project (spec, dbt project, .env.example, README)",
                description="Write a pipeline project into DIR: pipelines/NAME.yaml (local and stack "
                "environments), a dbt project (sources, one staging model per table), .env.example and a README. "
                "With --from-postgres, the tables come from the catalog of --schema (read-only). A column or "
                "table bankflow cannot carry exactly is never guessed: it is named with a hint, and nothing is "
                "written (exit 1) unless --allow-partial (then it is left out of the spec with a comment).")
    p.add_argument("directory", metavar="DIR", type=Path, help="project directory (new or empty, unless --force)")
    p.add_argument("--name", help="pipeline name (default: from DIR), a plain identifier")
    p.add_argument("--from-postgres", metavar="URL",
                   help="read the tables from this database, e.g. postgresql://user@host:5432/db (a password in "
                   "the URL is used to connect, never written or printed; or use PGPASSWORD)")
    p.add_argument("--schema", help="the source schema to read (with --from-postgres)")
    p.add_argument("--tables", type=_name_list, help="comma-separated tables of --schema (default: all)")
    p.add_argument("--allow-partial", action="store_true",
                   help="write the project even when columns or tables had to be left out")
    p.add_argument("--force", action="store_true", help="write into a non-empty DIR (replaces same-named files)")
    p.add_argument("--json", action="store_true", help="print what was written (and left out) as JSON")
    return parser


# ---------------------------------------------------------------- helpers

class _Session:
    """What main() needs to know when something goes wrong: the spec loaded (for the state dir, redaction)."""

    resolved: ResolvedSpec | None = None


def _load(args: argparse.Namespace, path: str | None = None, *, unset: str = "error") -> ResolvedSpec:
    resolved = load_spec(path or args.spec, env=args.env, unset=unset)
    _Session.resolved = resolved
    bankflow_log.add_secrets(resolved.secrets)
    return resolved


def _progress(args: argparse.Namespace) -> bool:
    return not (args.quiet or getattr(args, "json", False))


def _print(text: str, resolved: ResolvedSpec | None = None) -> None:
    print(resolved.redact(text) if resolved else text)


def _emit(issue: Issue, fmt: str = "text") -> None:
    if fmt == "github":
        print(issue.format_github())
    else:
        bankflow_log.error_line(issue.format(one_line=True))


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- commands

def cmd_validate(args: argparse.Namespace) -> int:
    results: list[dict[str, Any]] = []
    exit_code = EXIT_OK
    for path in args.specs:
        unset: tuple[str, ...] = ()
        try:
            resolved = load_spec(path, env=args.env, unset="defer")
            issues = list(resolved.warnings)
            unset = resolved.unset
            valid = True
        except SpecError as exc:
            issues, valid = exc.issues, False
            exit_code = EXIT_FAILED
        results.append({"file": path, "valid": valid, "issues": [i.to_dict() for i in issues],
                        "unset_variables": list(unset)})
        if args.json:
            continue
        for issue in issues:
            if not args.quiet or issue.severity == "error":
                _emit(issue, args.format)
        if valid and args.format == "text" and not args.quiet:
            counts = [f"{n} {kind}(s)" for kind in ("warning", "note")
                      if (n := sum(1 for i in issues if i.severity == kind))]
            if unset:
                counts.append(f"apply needs {', '.join(unset)}")
            print(f"{path}: valid" + (f" ({'; '.join(counts)})" if counts else ""))
    if args.json:
        print(json.dumps({"valid": exit_code == EXIT_OK, "files": results}, indent=2))
    return exit_code


def _check_out_dir(out: Path) -> None:
    """`plan --out` names a directory (created if missing), never an existing file."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory to write the artifacts to (created if missing)")
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--out {out} cannot be created: {probe} is a file; give a directory path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {probe} is not writable; give a directory you can write to")


def cmd_plan(args: argparse.Namespace) -> int:
    from bankflow.plan import plan

    if args.out is not None:
        _check_out_dir(args.out)
    resolved = _load(args, unset="defer" if args.offline else "error")
    pending = None
    if not args.offline:
        pending = _pending_files(resolved)
    try:
        result = plan(resolved, args.out, pending_files=pending, check_live=not args.offline)
    except OSError as exc:  # writing --out (an error elsewhere is not the plan directory's)
        written = Path(exc.filename) if exc.filename else None
        if args.out is None or written is None or args.out not in (written, *written.parents):
            raise
        raise BankflowError(f"cannot write the plan to {args.out}: {exc.strerror or exc} "
                            "(give a directory you can write to)") from None
    spec_notes = [i.message for i in resolved.notes]
    if args.json:
        print(json.dumps({
            "spec": args.spec, "env": resolved.env, "files": sorted(result.files),
            "out": str(args.out) if args.out else None,
            "compared_with": str(result.compared_with) if result.compared_with else None,
            "changed": sorted(result.changed), "notes": spec_notes + result.notes,
            "unset_variables": list(resolved.unset),
        }, indent=2))
    elif not args.quiet:
        _print_plan(args, resolved, result, spec_notes)
    return EXIT_DIFFERS if result.differs else EXIT_OK


def _print_plan(args: argparse.Namespace, resolved: ResolvedSpec, result: Any, notes: list[str]) -> None:
    spec = resolved.spec
    print(f"plan for {spec.name} (environment: {resolved.env or 'default'})")
    _print(f"  source     postgres {spec.source.host}:{spec.source.port}/{spec.source.database} "
           f"schema {spec.source.schema_name}, {len(spec.tables)} table(s)", resolved)
    _print(f"  cdc        {spec.cdc.describe()}", resolved)  # URLs may carry user-info: a secret
    _print(f"  lake       {spec.lake.url}/{spec.lake.layout}", resolved)
    _print(f"  warehouse  {spec.warehouse.describe()}", resolved)
    if spec.transform:
        print(f"  transform  dbt: {' → '.join(s.label for s in spec.transform.steps)}")
    else:
        print("  transform  none (the spec has no transform: section; no dbt profile is rendered)")
    for note in notes + result.notes:
        print(f"  note       {note}")
    for name in sorted(result.files):
        mark = "~" if name in result.changed else " "
        print(f"  {mark} {name}")
    if args.out:
        print(f"wrote {len(result.files)} artifact(s) to {args.out}")
    if result.changed:
        print(f"{len(result.changed)} change(s) against {result.compared_with or 'live state'}:")
        for diff in result.changed.values():
            _print(diff.rstrip("\n") or "(new)", resolved)
    elif result.compared_with is not None:
        print(f"no changes against {result.compared_with}")


def _pending_files(resolved: ResolvedSpec) -> dict[str, list[str]] | None:
    """Files in the lake not yet in the ledger, when the lake is reachable; None otherwise (plan stays offline)."""
    from bankflow.stages.load import plan_pending_files

    try:
        return plan_pending_files(resolved)
    except Exception as exc:  # unreachable lake or ledger, or a missing optional dependency: a placeholder
        log.info("pending lake files unknown (%s: %s); the plan shows a placeholder", type(exc).__name__, exc)
        return None


def cmd_schema(_: argparse.Namespace) -> int:
    from bankflow.spec.models import PipelineSpec

    schema = PipelineSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "bankflow pipeline spec"
    print(json.dumps(schema, indent=2))
    return EXIT_OK


def _stdout_for_json(args: argparse.Namespace) -> contextlib.AbstractContextManager[Any]:
    """With --json, stdout carries the JSON document only: what libraries print meanwhile (dbt's console
    lines) goes to stderr."""
    return contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()


def cmd_apply(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = _load(args)
    with _stdout_for_json(args):
        report = Pipeline(resolved).apply(stages=args.stages, follow=args.follow, progress=_progress(args),
                                          verify=args.verify)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    elif report.verify is not None and (not args.quiet or not report.verify.ok):
        print(report.verify.format())
    for table, events in sorted(report.dead_letters.items()):  # never a silent success
        bankflow_log.error_line(f"bankflow apply: {events:,} event(s) of {table} went to the dead-letter store "
                                f"(bankflow deadletters {args.spec} list --table {table})")
    if not report.ok:
        return EXIT_FAILED
    return EXIT_DEAD_LETTERS if report.dead_letters and not args.accept_dead_letters else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = _load(args)
    port = None if args.no_metrics else (-1 if args.metrics_port is None else args.metrics_port)
    with _stdout_for_json(args):
        outcome = Pipeline(resolved).run(workers=args.workers, progress=_progress(args), metrics_port=port)
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2, default=str))
    elif not args.quiet:
        rows = sum(outcome.rows_loaded.values())
        print(f"run ended after {outcome.seconds:.0f} s: {outcome.loads} load(s), {rows:,} rows into raw, "
              f"{outcome.transforms} transform(s) ({outcome.transform_errors} failed)")
    if outcome.cdc_error:
        bankflow_log.error_line(f"bankflow run: error: the stream stopped: {outcome.cdc_error}")
    if outcome.last_transform_ok is False:
        bankflow_log.error_line("bankflow run: error: the last transform failed (see the log above and "
                                f"{resolved.state_dir / 'dbt' / 'logs'})")
    for table, events in sorted(outcome.dead_letters.items()):
        bankflow_log.error_line(f"bankflow run: {events:,} event(s) of {table} went to the dead-letter store "
                                f"(bankflow deadletters {args.spec} list --table {table})")
    if not outcome.ok:
        return EXIT_FAILED
    return EXIT_DEAD_LETTERS if outcome.dead_letters and not args.accept_dead_letters else EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    if args.rate is not None and args.duration is None:
        raise UsageError("--rate needs --duration (seconds to run at that rate)")
    resolved = _load(args)
    result = Pipeline(resolved).generate(seed=args.seed, rate=args.rate, duration=args.duration,
                                         transactions=args.transactions, progress=_progress(args))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = _load(args)
    report = Pipeline(resolved).verify()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    elif not args.quiet or not report.ok:
        print(report.format())
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_query(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = _load(args)
    sql = sys.stdin.read() if args.sql == "-" else args.sql
    if args.limit < 0:
        raise UsageError("--limit must be 0 (all rows) or more")
    result = Pipeline(resolved).query(sql, limit=args.limit or None)
    if args.json:
        _print(json.dumps(result.to_dict(), indent=2), resolved)
    else:
        _print(result.format(), resolved)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = _load(args)
    status = Pipeline(resolved).status()
    if args.json:
        _print(json.dumps(status, indent=2, default=str), resolved)
    else:
        from bankflow.pipeline import format_status

        _print(format_status(status), resolved)
    return EXIT_ATTENTION if status.get("attention") else EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = _load(args)
    for line in Pipeline(resolved).down(drop_slot=args.drop_slot, destroy=args.destroy):
        if not args.quiet:
            print(line)
    return EXIT_OK


def cmd_consume(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = _load(args)
    result = Pipeline(resolved).consume(workers=args.workers, follow=args.follow, progress=_progress(args))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    problems = [*result.get("stopped", []), *result.get("failures", [])]
    for problem in problems:  # a worker that died or a schema change under freeze: never a silent success
        bankflow_log.error_line(f"bankflow consume: error: {problem}")
    return EXIT_FAILED if problems else EXIT_OK


def cmd_deadletters(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = _load(args)
    if args.table is not None and args.table not in {t.name for t in resolved.spec.tables}:
        raise UsageError(f"--table {args.table!r} is not a table of the spec")
    store = Pipeline(resolved).deadletters()
    if args.action == "replay":
        return _replay_dead_letters(args, resolved, store)
    pending = store.pending(args.table)
    if args.action == "list":
        _list_dead_letters(args, resolved, pending)
    else:
        _show_dead_letters(args, resolved, store)
    return EXIT_DEAD_LETTERS if pending else EXIT_OK


def _replay_dead_letters(args: argparse.Namespace, resolved: ResolvedSpec, store: Any) -> int:
    outcome = store.replay(args.table).to_dict()
    if args.json:
        _print(json.dumps(outcome, indent=2, default=str), resolved)
    elif not args.quiet:
        for table, figures in sorted(outcome["tables"].items()):
            _print(f"{table}: {figures['replayed']:,} event(s) replayed into {figures['files_written']} lake "
                   f"file(s), {figures['still_dead']:,} still dead (run apply to load them)", resolved)
    return EXIT_DEAD_LETTERS if outcome["still_dead"] else EXIT_OK


def _list_dead_letters(args: argparse.Namespace, resolved: ResolvedSpec, pending: dict[str, Any]) -> None:
    if args.json:
        _print(json.dumps({t: p.to_dict() for t, p in sorted(pending.items())}, indent=2), resolved)
        return
    for table, entry in sorted(pending.items()):
        reasons = "; ".join(f"{n} x {r}" for r, n in entry.reasons.most_common())
        _print(f"{table}: {entry.events:,} event(s) in {entry.files} file(s): {reasons}", resolved)
    if not pending and not args.quiet:
        print("no dead letters")


def _show_dead_letters(args: argparse.Namespace, resolved: ResolvedSpec, store: Any) -> None:
    shown: list[dict[str, Any]] = []
    for key, record in store.iter_records(args.table):
        if len(shown) >= args.limit:
            break
        shown.append({"file": key, **record})
    if args.json:
        _print(json.dumps(shown, indent=2, default=str), resolved)
        return
    for item in shown:
        _print(f"{item['table']} at {json.dumps(item['position'])}: {item['reason']}\n  "
               f"{_one_line(json.dumps(item['event'], default=str), 1000)}", resolved)


def cmd_backfill(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = _load(args)
    result = Pipeline(resolved).backfill(args.table, args.where, progress=_progress(args))
    if args.json:
        _print(json.dumps(result, indent=2, default=str), resolved)
    elif result.get("queued"):
        _print(f"backfill of {args.table} queued: {result['message']}", resolved)
    elif result["ok"] and not args.quiet:
        _print(f"backfill of {args.table}: {result.get('rows', 0):,} rows read and loaded", resolved)
    report = result.get("report") or {}
    for stage in report.get("stages", []):
        if not stage.get("ok", True):
            bankflow_log.error_line(resolved.redact(f"bankflow backfill: error: {stage.get('name')}: "
                                                    f"{stage.get('error')}"))
    dead = {t: n for t, n in (report.get("dead_letters") or {}).items() if n}
    for table, count in dead.items():
        bankflow_log.error_line(f"bankflow backfill: {count} event(s) of {table} went to the dead-letter store")
    if not result["ok"]:
        return EXIT_FAILED
    return EXIT_DEAD_LETTERS if dead else EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from urllib.parse import unquote, urlsplit

    from bankflow.scaffold import init_project

    if args.from_postgres and (password := urlsplit(args.from_postgres).password):
        bankflow_log.add_secrets([password, unquote(password)])  # never printed, even in an internal error
    result = init_project(args.directory, args.name, from_postgres=args.from_postgres, schema=args.schema,
                          tables=args.tables, force=args.force, allow_partial=args.allow_partial)
    for omission in result.omissions:
        bankflow_log.error_line(f"bankflow init: {'warning' if result.written else 'error'}: {omission.line()}")
    if args.json:
        print(json.dumps({"directory": str(result.directory), "name": result.name, "written": result.written,
                          "complete": result.complete, "files": result.files if result.written else [],
                          "left_out": [o.line() for o in result.omissions]}, indent=2))
    elif not result.written:
        bankflow_log.error_line(f"bankflow init: error: {len(result.omissions)} column(s)/table(s) cannot be "
                                "carried exactly; nothing written (rerun with --allow-partial to write the "
                                "project without them)")
    elif not args.quiet:
        print(f"wrote {len(result.files)} file(s) to {result.directory}: pipelines/{result.name}.yaml, dbt/, "
              ".env.example, README.md" + (f" ({len(result.omissions)} left out)" if result.omissions else ""))
    return EXIT_OK if result.written else EXIT_FAILED


COMMANDS = {
    "validate": cmd_validate, "plan": cmd_plan, "schema": cmd_schema, "apply": cmd_apply, "run": cmd_run,
    "generate": cmd_generate, "verify": cmd_verify, "query": cmd_query, "status": cmd_status, "down": cmd_down,
    "consume": cmd_consume, "init": cmd_init, "deadletters": cmd_deadletters,
    "backfill": cmd_backfill,
}


# ---------------------------------------------------------------- main

def _write_trace(command: str) -> Path | None:
    """The current exception's traceback (redacted) under <state_dir>/logs/, or the temp dir; None if neither."""
    resolved = _Session.resolved
    text = traceback.format_exc()
    text = resolved.redact(text) if resolved is not None else bankflow_log.redact(text)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    name = f"{stamp}-{command}-{os.getpid()}.traceback.txt"
    directories = [resolved.state_dir / "logs"] if resolved is not None else []
    for directory in [*directories, Path(tempfile.gettempdir())]:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / (name if directory in directories else f"bankflow-{name}")
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def _internal_error(command: str, exc: BaseException, verbose: int) -> int:
    path = _write_trace(command)
    resolved = _Session.resolved
    message = resolved.redact(str(exc)) if resolved is not None else bankflow_log.redact(str(exc))
    if verbose and bankflow_log.json_lines():
        log.error("traceback of the internal error", exc_info=True)  # one JSON line, the trace in "exc"
    elif verbose:
        sys.stderr.write(bankflow_log.redact(traceback.format_exc()))
    where = f"; full trace written to {path}" if path else ""
    bankflow_log.error_line(f"bankflow {command}: internal error: {type(exc).__name__}: {_one_line(message)} "
                            f"(run with -v or BANKFLOW_DEBUG=1 for the traceback{where})")
    return EXIT_FAILED


def _silence_stdout() -> None:
    """After a BrokenPipeError: point stdout (and stderr, if it was the same pipe) at /dev/null, so the flush at
    exit does not fail again (the Python docs' recipe for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):
            continue


def _run(args: argparse.Namespace, verbose: int) -> int:
    try:
        return COMMANDS[args.command](args)
    except SpecError as exc:
        fmt = getattr(args, "format", "text")
        for issue in exc.issues:
            if not args.quiet or issue.severity == "error":
                _emit(issue, fmt)
        return EXIT_FAILED
    except BankflowError as exc:
        if os.environ.get("BANKFLOW_DEBUG"):
            raise
        if verbose >= 2:
            log.debug("traceback", exc_info=True)
        resolved = _Session.resolved
        bankflow_log.error_line(f"bankflow {args.command}: error: {resolved.redact(str(exc)) if resolved else exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        bankflow_log.error_line(f"bankflow {args.command}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise
    except Exception as exc:  # the last resort: one line, the trace in a file
        if os.environ.get("BANKFLOW_DEBUG"):
            raise
        return _internal_error(args.command, exc, verbose)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = args.verbose + args.verbose_global
    args.quiet = args.quiet or args.quiet_global
    if verbose and args.quiet:
        parser.error("-v and -q cannot be combined")
    bankflow_log.configure(verbose, args.quiet, fmt=args.log_format or args.log_format_global or "text")
    _Session.resolved = None
    try:
        code = _run(args, verbose)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # e.g. `bankflow schema | head -1`: the reader has what it wanted
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    finally:
        bankflow_log.reset()
        _Session.resolved = None


if __name__ == "__main__":
    raise SystemExit(main())
