"""The built-in CDC engine of the `local` environment: Postgres logical replication (pgoutput) → lake.

The replication slot is the durable log; the slot is acknowledged only once the files holding its events are
durable, and a crashed run's files are reproduced to the same keys (`bankflow.lake.replay`). By job:

- `connection`: SQL and replication connections with the session settings that fix the text form of values;
- `slot`: slot administration (create, ensure, drop), catalog primary keys, the snapshot marker files;
- `snapshot`: the initial snapshot, COPY per table at the slot's exported snapshot → batches → lake;
- `stream`: the stream loop, replication messages → per-table batches → lake → acknowledgement;
- `pgoutput`: the protocol decoder; `events`: Debezium-shaped change events of the same changes.

This module is the entry point the engine and the tools call: `stream_to_lake`, `ensure_slot`, `drop_slot`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from bankflow.engines.builtin.connection import CdcError
from bankflow.engines.builtin.slot import SlotInfo, drop_slot, ensure_slot
from bankflow.engines.builtin.stream import CdcRunResult, StreamReader
from bankflow.spec.loader import ResolvedSpec

__all__ = ["CdcError", "CdcRunResult", "SlotInfo", "StreamReader", "drop_slot", "ensure_slot", "stream_to_lake"]


def stream_to_lake(
    resolved: ResolvedSpec,
    connect_kwargs: dict[str, Any],
    *,
    follow: bool = False,
    stop: threading.Event | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> CdcRunResult:
    """Ensure the slot (initial snapshot on creation), then stream changes into the lake, backfilling the tables
    the stream does not cover yet (new to the spec, re-added, requested: `bankflow.engines.builtin.backfill`).

    Catch-up (default): returns once every transaction committed before the call is durable in the lake and
    acknowledged. Follow: runs until `stop` is set, flushing by the spec's flush policy and at shutdown.
    `progress` gets the snapshot's ``done``/``total`` rows while it runs, then the stream's figures.
    """
    t0 = time.monotonic()
    slot = ensure_slot(resolved, connect_kwargs, progress=progress)
    result = StreamReader(resolved, connect_kwargs, progress=progress, fresh_slot=slot.created).run(
        follow=follow, stop=stop)
    result.snapshot_rows = slot.snapshot_rows
    result.dead_letters += slot.snapshot_dead_letters
    result.files = slot.snapshot_files + result.files
    result.seconds = time.monotonic() - t0
    return result
