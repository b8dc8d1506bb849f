"""Stage `load`: lake files → warehouse raw tables, each file exactly once.

bankflow keeps its own ledger of loaded files in the warehouse (never Snowflake's 64-day load metadata alone):
the files to load are those in the lake minus those in the ledger, listed explicitly in each statement.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bankflow.stages.base import RunContext, StageResult

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table
    from bankflow.warehouses.adapter import WarehouseAdapter


def lake_files(resolved: ResolvedSpec, table: Table) -> list[str]:
    """Parquet keys (relative to the lake root) of one table, sorted by file name (stream, then position).

    The directories come from the lake writer itself (the layout with `*` for date and partition), so the load
    looks exactly where files are written; temporary files end in `.tmp` and dead letters in `.jsonl`.
    """
    from bankflow.lake.filesystem import lake_filesystem
    from bankflow.lake.writer import LakeWriter

    fs, root = lake_filesystem(resolved)
    spec = resolved.spec
    writer = LakeWriter(fs, root, spec.lake)
    directory = writer.directory(table=table.name, schema=spec.source.schema_name, topic=spec.topic_for(table))
    prefix = writer.root + "/"
    keys = [path.removeprefix(prefix) for path in fs.glob(f"{directory}/*.parquet")]
    return sorted(keys, key=lambda key: key.rsplit("/", 1)[-1])


def pending_files(resolved: ResolvedSpec, adapter: WarehouseAdapter | None = None) -> dict[str, list[str]]:
    """Per table: lake files not yet in the ledger."""
    from bankflow.warehouses import connect_warehouse

    own = adapter is None
    adapter = adapter or connect_warehouse(resolved)
    try:
        result = {}
        for table in resolved.spec.tables:
            try:
                loaded = adapter.ledger_keys(table)
            except Exception:
                loaded = set()
            result[table.name] = [k for k in lake_files(resolved, table) if k not in loaded]
        return result
    finally:
        if own:
            adapter.close()


def plan_pending_files(resolved: ResolvedSpec) -> dict[str, list[str]] | None:
    """Pending files for `plan`, without side effects: nothing is created, the ledger is read read-only.

    None when the lake or the ledger cannot be read (plan then shows a placeholder instead of a file list).
    """
    lake = resolved.spec.lake
    if lake.scheme == "file" and not resolved.resolve_path(lake.url).is_dir():
        return {t.name: [] for t in resolved.spec.tables}  # no lake yet: nothing pending
    adapter = resolved.spec.warehouse.connect(resolved, read_only=True)
    if adapter is None:  # no warehouse yet: every lake file is pending
        return {t.name: lake_files(resolved, t) for t in resolved.spec.tables}
    try:
        return pending_files(resolved, adapter)
    finally:
        adapter.close()


def run(ctx: RunContext) -> StageResult:
    from bankflow.warehouses import connect_warehouse

    started = time.monotonic()
    resolved = ctx.resolved
    adapter = connect_warehouse(resolved)
    result = StageResult("load")
    try:
        ctx.progress.update("load", "creating raw tables", force=True)
        setup = adapter.setup()
        result.details["exactly_once"] = adapter.capabilities.exactly_once()
        pending = pending_files(resolved, adapter)
        per_table: dict[str, dict[str, int]] = {}
        for table in resolved.spec.tables:
            files = pending[table.name]
            ctx.progress.update("load", f"{table.raw_name}: loading {len(files)} file(s)", force=True)
            outcome = adapter.load_files(table, files) if files else None
            per_table[table.raw_name] = {"files": outcome.files if outcome else 0,
                                         "rows": outcome.rows if outcome else 0}
            if outcome:
                result.files += outcome.files
                result.rows += outcome.rows
                if outcome.results:
                    result.details.setdefault("copy_results", []).extend(outcome.results)
        result.details.update({"tables": per_table, "setup_statements": len(setup)})
    finally:
        adapter.close()
    result.seconds = time.monotonic() - started
    return result
