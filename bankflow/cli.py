"""The `bankflow` command: a thin layer over the library API.

Exit codes: 0 success, 1 invalid spec or failed stage/check, 2 usage, 3 `plan` found differences.
Errors bankflow raises on purpose are printed without a traceback (set BANKFLOW_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bankflow.errors import BankflowError, SpecError
from bankflow.spec.loader import ResolvedSpec, load_spec

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DIFFERS = 0, 1, 2, 3


def _add_spec(parser: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        parser.add_argument("specs", nargs="+", metavar="SPEC", help="pipeline YAML file(s)")
    else:
        parser.add_argument("spec", metavar="SPEC", help="pipeline YAML file, e.g. pipelines/banking.yaml")
    parser.add_argument("--env", "-e", default=None,
                        help="environment overlay from the spec's environments: (default: the spec's default_env)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bankflow",
        description="Declarative CDC pipelines: PostgreSQL → CDC → Kafka → Parquet lake → warehouse raw → dbt.",
    )
    parser.add_argument("--version", action="version", version="bankflow 0.1.0")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("validate", help="check spec files (fast; for CI)",
                            description="Validate spec files: types, identifiers, references, dbt selectors.")
    _add_spec(p, many=True)
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    p.add_argument("--format", choices=["text", "github"], default="text",
                   help="github: workflow annotations (::error file=…,line=…::…)")

    p = commands.add_parser("plan", help="render every artifact and show what changed",
                            description="Render the Debezium connector config, warehouse SQL, consumer topology "
                            "and dbt profile; compare with the previous plan in --out or the last applied state. "
                            "Exit 3 when something differs.")
    _add_spec(p)
    p.add_argument("--out", type=Path, help="directory to write the artifacts to")
    p.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    p.add_argument("--offline", action="store_true", help="do not contact Kafka Connect or the lake")

    commands.add_parser("schema", help="print the spec's JSON Schema (for editors)",
                        description="Print the JSON Schema of pipeline specs.")

    p = commands.add_parser("apply", help="run the pipeline: source → cdc → consume → load → transform",
                            description="Run the stages in order; idempotent. Catches up to the source's current "
                            "position and stops, unless --follow.")
    _add_spec(p)
    p.add_argument("--stages", help="comma-separated subset of: source,cdc,load,transform")
    p.add_argument("--follow", action="store_true", help="keep streaming until SIGINT/SIGTERM (then flush)")
    p.add_argument("--json", action="store_true", help="print the run report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")

    p = commands.add_parser("generate", help="write a realistic workload into the source database",
                            description="Run the spec's workload (generate.workload) against the source.")
    _add_spec(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one modest iteration (the default)")
    mode.add_argument("--rate", type=float, help="business transactions per second (with --duration)")
    mode.add_argument("--transactions", type=int, help="bulk: insert this many transaction rows, fast")
    p.add_argument("--duration", type=float, help="seconds to run at --rate")
    p.add_argument("--seed", type=int, help="random seed: the same seed on a fresh source gives the same data")
    p.add_argument("--json", action="store_true")

    p = commands.add_parser("verify", help="reconcile source and warehouse; exit 1 on any difference",
                            description="Compare the source with the warehouse: row counts and keys per table "
                            "(latest state from raw), and the spec's verify checks.")
    _add_spec(p)
    p.add_argument("--json", action="store_true")

    p = commands.add_parser("status", help="services, slot lag, lake and raw counts, last run",
                            description="Show the pipeline's state.")
    _add_spec(p)
    p.add_argument("--json", action="store_true")

    p = commands.add_parser("down", help="stop the embedded services apply started",
                            description="Stop embedded services (the data stays; apply restarts them).")
    _add_spec(p)
    p.add_argument("--drop-slot", action="store_true",
                   help="also drop the replication slot (otherwise it keeps WAL for the next run)")

    p = commands.add_parser("consume", help="run Kafka consumer workers into the lake (stack)",
                            description="Consume the spec's topics into the lake with N worker processes.")
    _add_spec(p)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--follow", action="store_true", help="keep consuming until interrupted")
    p.add_argument("--json", action="store_true")
    return parser


# ---------------------------------------------------------------- commands

def _print(text: str, resolved: ResolvedSpec | None = None) -> None:
    print(resolved.redact(text) if resolved else text)


def cmd_validate(args: argparse.Namespace) -> int:
    results: list[dict[str, Any]] = []
    exit_code = EXIT_OK
    for path in args.specs:
        try:
            resolved = load_spec(path, env=args.env)
            issues = list(resolved.warnings)
            valid = True
        except SpecError as exc:
            issues, valid = exc.issues, False
            exit_code = EXIT_FAILED
        results.append({"file": path, "valid": valid, "issues": [i.to_dict() for i in issues]})
        if args.json:
            continue
        for issue in issues:
            print(issue.format_github() if args.format == "github" else issue.format(),
                  file=sys.stdout if args.format == "github" else sys.stderr)
        if valid and args.format == "text":
            warnings = sum(1 for i in issues if i.severity == "warning")
            print(f"{path}: valid" + (f" ({warnings} warning(s))" if warnings else ""))
    if args.json:
        print(json.dumps({"valid": exit_code == EXIT_OK, "files": results}, indent=2))
    return exit_code


def cmd_plan(args: argparse.Namespace) -> int:
    from bankflow.plan import plan

    resolved = load_spec(args.spec, env=args.env)
    pending = None
    if not args.offline:
        pending = _pending_files(resolved)
    result = plan(resolved, args.out, pending_files=pending, check_live=not args.offline)
    if args.json:
        print(json.dumps({
            "spec": args.spec, "env": resolved.env, "files": sorted(result.files),
            "out": str(args.out) if args.out else None,
            "compared_with": str(result.compared_with) if result.compared_with else None,
            "changed": sorted(result.changed), "notes": result.notes,
        }, indent=2))
    else:
        spec = resolved.spec
        print(f"plan for {spec.name} (environment: {resolved.env or 'default'})")
        print(f"  source     postgres {spec.source.host}:{spec.source.port}/{spec.source.database} "
              f"schema {spec.source.schema_name}, {len(spec.tables)} table(s)")
        print(f"  cdc        {spec.cdc.describe()}")
        print(f"  lake       {spec.lake.url}/{spec.lake.layout}")
        print(f"  warehouse  {spec.warehouse.describe()}")
        if spec.transform:
            print(f"  transform  dbt: {' → '.join(s.label for s in spec.transform.steps)}")
        for note in result.notes:
            print(f"  note       {note}")
        for name in sorted(result.files):
            mark = "~" if name in result.changed else " "
            print(f"  {mark} {name}")
        if args.out:
            print(f"wrote {len(result.files)} artifact(s) to {args.out}")
        if result.compared_with is not None or result.changed:
            if result.changed:
                print(f"{len(result.changed)} change(s) against {result.compared_with or 'live state'}:")
                for diff in result.changed.values():
                    _print(diff.rstrip("\n") or "(new)", resolved)
            else:
                print(f"no changes against {result.compared_with}")
    return EXIT_DIFFERS if result.differs else EXIT_OK


def _pending_files(resolved: ResolvedSpec) -> dict[str, list[str]] | None:
    """Files in the lake not yet in the ledger, when the lake is reachable; None otherwise (plan stays offline)."""
    from bankflow.stages.load import plan_pending_files

    try:
        return plan_pending_files(resolved)
    except Exception:  # unreachable lake or ledger, or a missing optional dependency: a placeholder in the plan
        return None


def cmd_schema(_: argparse.Namespace) -> int:
    from bankflow.spec.models import PipelineSpec

    schema = PipelineSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "bankflow pipeline spec"
    print(json.dumps(schema, indent=2))
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = load_spec(args.spec, env=args.env)
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    report = Pipeline(resolved).apply(stages=stages, follow=args.follow, progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_generate(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    if args.rate is not None and args.duration is None:
        print("bankflow generate: --rate needs --duration", file=sys.stderr)
        return EXIT_USAGE
    resolved = load_spec(args.spec, env=args.env)
    result = Pipeline(resolved).generate(seed=args.seed, rate=args.rate, duration=args.duration,
                                         transactions=args.transactions, progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = load_spec(args.spec, env=args.env)
    report = Pipeline(resolved).verify()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.format())
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = load_spec(args.spec, env=args.env)
    status = Pipeline(resolved).status()
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        from bankflow.pipeline import format_status

        print(format_status(status))
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = load_spec(args.spec, env=args.env)
    for line in Pipeline(resolved).down(drop_slot=args.drop_slot):
        print(line)
    return EXIT_OK


def cmd_consume(args: argparse.Namespace) -> int:
    from bankflow.pipeline import Pipeline

    resolved = load_spec(args.spec, env=args.env)
    result = Pipeline(resolved).consume(workers=args.workers, follow=args.follow, progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return EXIT_OK


COMMANDS = {
    "validate": cmd_validate, "plan": cmd_plan, "schema": cmd_schema, "apply": cmd_apply,
    "generate": cmd_generate, "verify": cmd_verify, "status": cmd_status, "down": cmd_down,
    "consume": cmd_consume,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SpecError as exc:
        fmt = getattr(args, "format", "text")
        for issue in exc.issues:
            print(issue.format_github() if fmt == "github" else issue.format(), file=sys.stderr)
        return EXIT_FAILED
    except BankflowError as exc:
        if os.environ.get("BANKFLOW_DEBUG"):
            raise
        print(f"bankflow {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"bankflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
