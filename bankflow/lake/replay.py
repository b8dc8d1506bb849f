"""Exactly-once into the lake across crashes: replay reproduces the files a crashed run left behind.

A file is written (durably) before its source position is acknowledged (slot ``flush_lsn``, Kafka commit).
A crash in between leaves *orphans*: files whose events the source will send again. If the replay cut its
files by time or size, it would write the same events under different keys, and the warehouse (which loads
each key once) would load them twice. So on start, per stream:

- files wholly after the acknowledged position (their first event is not acknowledged) are **cuts**: the replay
  flushes exactly after the event at each file's last position, reproducing the same key with the same rows
  (the key and every row come from the source positions, never from the clock);
- a file that straddles the acknowledged position (its first event acknowledged, its last not; possible when a
  batch flushed in the middle of a transaction) cannot be reproduced because the acknowledged part is not sent
  again; its unacknowledged events are already durable in it, so the replay **skips** events up to its last
  position;
- time- and size-based flushing resumes only after the last cut.

`ReplayPlan` holds that decision for one stream; the event source consults it per event while it is active.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bankflow.lake.writer import LakeFile


@dataclass
class ReplayPlan:
    cuts: list[LakeFile] = field(default_factory=list)
    skip_until: Any = None

    @classmethod
    def from_files(cls, files: Sequence[LakeFile], is_acked: Callable[[Any], bool]) -> ReplayPlan:
        plan = cls()
        for f in sorted(files, key=lambda f: (f.first, f.last)):
            if is_acked(f.last):
                continue
            if is_acked(f.first):
                if plan.skip_until is None or f.last > plan.skip_until:
                    plan.skip_until = f.last
            else:
                plan.cuts.append(f)
        return plan

    @property
    def active(self) -> bool:
        return bool(self.cuts) or self.skip_until is not None

    def skip(self, position: Any) -> bool:
        """True for a replayed event that is already durable in a straddling file."""
        if self.skip_until is None:
            return False
        if position <= self.skip_until:
            return True
        self.skip_until = None
        return False

    def cut_due(self, position: Any) -> LakeFile | None:
        """The orphan whose last event this is (flush now to reproduce it), else None."""
        if self.cuts and position >= self.cuts[0].last:
            return self.cuts.pop(0)
        return None
