"""The built-in engine for the `cdc` stage: the slot is the durable log, acknowledged once files are durable."""

from __future__ import annotations

import time
from typing import Any

from bankflow.engines.base import CdcEngine, EngineRun
from bankflow.stages.base import RunContext


class BuiltinEngine(CdcEngine):
    reports_durable_position = True  # the slot's acknowledgement target: every table is durable before it

    def run(self, ctx: RunContext) -> EngineRun:
        from bankflow.engines.builtin.reader import stream_to_lake
        from bankflow.lake.positions import parse_lsn

        started = time.monotonic()

        def progress(info: dict[str, Any]) -> None:
            if ctx.on_durable is not None and info.get("acked_lsn"):
                ctx.on_durable(parse_lsn(str(info["acked_lsn"])))
            events = int(info.get("events", 0))
            rate = events / max(time.monotonic() - started, 1e-6)
            # A phase whose size is known (the initial snapshot, from row estimates) reports done/total/unit.
            ctx.progress.update("cdc", f"{events:,} events ({rate:,.0f}/s), {info.get('files', 0)} files",
                                done=info.get("done"), total=info.get("total"), unit=info.get("unit", ""))

        ctx.progress.update("cdc", f"slot {self.spec.cdc.slot}", force=True)
        # stream_to_lake creates the slot on first use, with the initial snapshot, and reports both.
        outcome = stream_to_lake(self.resolved, ctx.source_connect_kwargs(), follow=ctx.follow, stop=ctx.stop,
                                 progress=progress)
        summary = dict(vars(outcome))
        files = summary.pop("files", [])
        # Snapshot reads ('r') are change events too: the first run of a slot may have nothing else.
        events = (int(summary.get("events", 0)) + int(summary.get("snapshot_rows", 0) or 0)
                  + int(summary.get("backfill_rows", 0) or 0))
        return EngineRun(events=events, files=len(files) if isinstance(files, list) else int(files),
                         details=summary)

    def request_backfill(self, table: str, where: str | None, source_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Record an on-demand backfill of `table` (the next stream run, or a running follow, carries it out).

        Returns the request's marker and ``slot_active``: a `apply --follow` holds the slot (it picks the request
        up within seconds), so the caller must not start a stream of its own.
        """
        from bankflow.engines.builtin.connection import connect
        from bankflow.engines.builtin.slot import slot_row
        from bankflow.errors import BankflowError
        from bankflow.lake.filesystem import lake_filesystem
        from bankflow.source.backfill import Coverage, request

        spec = self.spec
        by_name = {t.name: t for t in spec.tables}
        if table not in by_name:
            raise BankflowError(f"table {table!r} is not a table of the spec; choose from {', '.join(by_name)}")
        fs, root = lake_filesystem(self.resolved)
        record = request(Coverage(fs, root, spec.cdc.slot), by_name[table], where)
        conn = connect(source_kwargs)
        try:
            row = slot_row(conn, spec.cdc.slot)
        finally:
            conn.close()
        return {**record, "slot_active": bool(row and row.active_pid)}
