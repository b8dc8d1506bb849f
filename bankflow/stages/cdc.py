"""Stage `cdc`: change events → Parquet in the lake, positions acknowledged only once files are durable.

The spec's engine does the work (`bankflow/engines/<engine>/`); both feed the same per-table batches and lake
writer. This stage only times it and reports what it carried.
"""

from __future__ import annotations

import time

from bankflow.stages.base import RunContext, StageResult


def run(ctx: RunContext) -> StageResult:
    started = time.monotonic()
    outcome = ctx.resolved.spec.cdc.engine_for(ctx.resolved).run(ctx)
    return StageResult("cdc", seconds=time.monotonic() - started, events=outcome.events, files=outcome.files,
                       details=outcome.details)
