"""The exchange types between the generic runner and a workload module.

They live here, not in a workload, so that `bankflow` stays ignorant of any particular tables: a workload
(e.g. ``pipelines/workloads/banking.py``) imports these and the runner only ever sees counts per table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class WorkloadError(Exception):
    """A workload cannot be loaded or cannot run; the message says what to change."""


@dataclass(frozen=True)
class WorkloadOptions:
    """How much work a workload does and how fast.

    Modes (checked in this order): ``once`` runs one modest iteration; ``transactions`` without ``rate``
    is bulk mode (that many transaction rows as fast as possible, for benchmarks); otherwise iterations
    are paced at ``rate`` business transactions per second until ``duration`` seconds (or ``transactions``
    rows) are reached, or forever when neither is set.
    """

    seed: int | None = None
    once: bool = False
    rate: float | None = None
    duration: float | None = None
    transactions: int | None = None
    batch_size: int = 5000
    # Set by run_workload: opens another connection like the workload's own (same database, same search_path),
    # for workloads that write in parallel. None when a workload is called directly: it must cope with one.
    connect: Callable[[], Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("rate", "duration"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise WorkloadError(f"workload option {name} must be > 0, got {value!r}")
        if self.transactions is not None and self.transactions <= 0:
            raise WorkloadError(f"workload option transactions must be > 0, got {self.transactions!r}")
        if self.batch_size <= 0:
            raise WorkloadError(f"workload option batch_size must be > 0, got {self.batch_size!r}")

    @property
    def mode(self) -> str:
        """One of ``once``, ``bulk``, ``paced``: the single place that decides which options win."""
        if self.once:
            return "once"
        if self.transactions is not None and self.rate is None:
            return "bulk"
        return "paced"


def _add(into: dict[str, int], table: str, n: int) -> None:
    if n:
        into[table] = into.get(table, 0) + n


@dataclass
class WorkloadResult:
    """Rows a workload changed per table, counted only once their database transaction committed."""

    inserted: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    db_transactions: int = 0
    iterations: int = 0
    seconds: float = 0.0
    seed: int | None = None

    def insert(self, table: str, n: int = 1) -> None:
        _add(self.inserted, table, n)

    def update(self, table: str, n: int = 1) -> None:
        _add(self.updated, table, n)

    def delete(self, table: str, n: int = 1) -> None:
        _add(self.deleted, table, n)

    def merge(self, other: WorkloadResult) -> None:
        """Fold a committed batch into the running total (seconds and seed are the caller's)."""
        for table, n in other.inserted.items():
            self.insert(table, n)
        for table, n in other.updated.items():
            self.update(table, n)
        for table, n in other.deleted.items():
            self.delete(table, n)
        self.db_transactions += other.db_transactions
        self.iterations += other.iterations

    @property
    def rows(self) -> int:
        """All rows changed, the unit CDC throughput is measured in."""
        return sum(self.inserted.values()) + sum(self.updated.values()) + sum(self.deleted.values())

    def as_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable copy: what progress callbacks and the CLI print."""
        return {
            "inserted": dict(self.inserted),
            "updated": dict(self.updated),
            "deleted": dict(self.deleted),
            "db_transactions": self.db_transactions,
            "iterations": self.iterations,
            "seconds": round(self.seconds, 6),
            "seed": self.seed,
        }

    @classmethod
    def coerce(cls, value: object) -> WorkloadResult:
        """Accept what a workload's ``run`` returned: a WorkloadResult or a mapping with the same keys."""
        if isinstance(value, WorkloadResult):
            return value
        if isinstance(value, Mapping):
            known = {k: value[k] for k in cls.__dataclass_fields__ if k in value}
            for key in ("inserted", "updated", "deleted"):
                known[key] = {str(t): int(n) for t, n in dict(known.get(key) or {}).items()}
            return cls(**known)
        raise WorkloadError(f"a workload's run() must return a WorkloadResult or a mapping, got {type(value).__name__}")


ProgressCallback = Callable[[dict[str, Any]], None]
"""Called after every committed batch with ``WorkloadResult.as_dict()`` of the running total."""
