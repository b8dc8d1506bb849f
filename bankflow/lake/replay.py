"""Exactly-once into the lake across crashes: replay reproduces the files a crashed run left behind.

One mechanism for both engines. A file is written (durably) before its source position is acknowledged (slot
``flush_lsn`` for the built-in reader, the group's committed offset for the Kafka consumer). A crash in between
leaves *orphans*: files whose events the source will send again. If the replay cut its files by time or size,
it would write the same events under different keys, and the warehouse (which loads each key once) would load
them twice. So on start, per stream (a table for the built-in reader, a topic partition for Kafka):

- files wholly after the acknowledged position (their first event is not acknowledged) are **cuts**: the replay
  flushes exactly after the event at each file's last position, reproducing the same key with the same rows
  (the key and every row come from the source positions, never from the clock);
- a file that straddles the acknowledged position (its first event acknowledged, its last not; possible when a
  batch flushed in the middle of a transaction) cannot be reproduced because the acknowledged part is not sent
  again; its unacknowledged events are already durable in it, so the replay **skips** events up to its last
  position;
- time- and size-based flushing resumes only after the last cut.

Both need positions that name one event each: a Kafka offset does; on the built-in reader the change LSN alone
does not (many rows of a COPY or multi-row INSERT share one, and a key change is two events at one), so its
positions carry the event's index in its transaction (`bankflow.lake.positions.LsnPosition`).

A replay that cannot reproduce an orphan exactly (the event at its last position never comes, or the replayed
batch would start elsewhere than the orphan) would leave the lake with events twice or not at all. A *strict*
plan (the built-in reader's) raises `ReplayMismatch` then, so the run stops with an error instead of going on;
a plan that is not strict (the Kafka consumer's, whose offsets can vanish by retention or compaction) warns and
cuts where it is, so the cuts after it stay aligned.

"Acknowledged" is one rule for every position kind: a position is acknowledged when it sorts before the
*resume position*, the first position the source sends again (`lsn_resume`, `kafka_resume`).

`ReplayPlan` holds that decision for one stream; the event source consults it per event while it is active.
Batches whose events all became dead letters are batches too (`LakeWriter.list_batches` lists them), so their
keys are reproduced the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bankflow.errors import StageError
from bankflow.lake.positions import KafkaPosition, LsnPosition, show_position
from bankflow.lake.writer import LakeFile

log = logging.getLogger(__name__)

P = TypeVar("P", LsnPosition, KafkaPosition)


class ReplayMismatch(StageError):
    """A replay that cannot reproduce the files a crashed run left behind: going on would lose or duplicate."""


def lsn_resume(confirmed_flush_lsn: int) -> LsnPosition:
    """The slot sends again every transaction whose commit LSN is at or after its confirmed flush LSN."""
    return LsnPosition(confirmed_flush_lsn, 0)


def kafka_resume(partition: int, committed_offset: int) -> KafkaPosition:
    """The group resumes a partition at its committed offset."""
    return KafkaPosition(partition, committed_offset)


def _same_stream(file: LakeFile, resume: LsnPosition | KafkaPosition) -> bool:
    """A file is of the resumed stream when its positions are of the same kind (and Kafka partition)."""
    if type(file.first) is not type(resume) or type(file.last) is not type(resume):
        return False
    return not isinstance(resume, KafkaPosition) or file.first.partition == resume.partition


@dataclass
class ReplayPlan(Generic[P]):
    cuts: list[LakeFile] = field(default_factory=list)
    skip_until: P | None = None
    strict: bool = False  # raise ReplayMismatch instead of warning when an orphan cannot be reproduced
    _skip_file: str = ""  # the key of the straddling file being skipped (for the error)

    @classmethod
    def resume(cls, files: Sequence[LakeFile], resume: P, *, strict: bool = False) -> ReplayPlan[P]:
        """The plan for a stream the source resends from `resume` on: positions before it are acknowledged.

        Files of other streams in `files` (another Kafka partition, another position kind) are ignored.
        """
        mine = [f for f in files if _same_stream(f, resume)]
        plan = cls.from_files(mine, lambda position: bool(position < resume))
        plan.strict = strict
        return plan

    @classmethod
    def from_files(cls, files: Sequence[LakeFile], is_acked: Callable[[P], bool]) -> ReplayPlan[P]:
        plan: ReplayPlan[P] = cls()
        for f in sorted(files, key=lambda f: (f.first, f.last)):
            if is_acked(f.last):
                continue
            if is_acked(f.first):
                if plan.skip_until is None or f.last > plan.skip_until:
                    plan.skip_until = f.last
                    plan._skip_file = f.key
            else:
                plan.cuts.append(f)
        return plan

    @property
    def active(self) -> bool:
        return bool(self.cuts) or self.skip_until is not None

    def describe(self) -> str:
        """For the log line a replaying stream writes when it starts."""
        text = f"{len(self.cuts)} file(s) to reproduce"
        if self.skip_until is not None:
            text += f", skipping events up to ({show_position(self.skip_until)}): durable in a file that " \
                    "straddles the acknowledged position"
        return text

    def skip(self, position: P) -> bool:
        """True for a replayed event that is already durable in a straddling file (up to and including the
        event at its last position, which ends the skip).

        An event after that position while the skip is still on means the event at it never came back: the
        straddling file holds events the replay cannot line up with (strict: `ReplayMismatch`).
        """
        until = self.skip_until
        if until is None:
            return False
        if position < until:
            return True
        self.skip_until = None
        if position == until:
            return True
        if self.strict:
            raise ReplayMismatch(
                f"replay passed the end ({show_position(until)}) of the straddling file {self._skip_file} at "
                f"({show_position(position)}) without meeting it: the events after the acknowledged position "
                "cannot be lined up with the lake, so the stream stops here instead of losing or duplicating them "
                "(nothing after the acknowledged position was acknowledged)")
        return False

    def cut_due(self, position: P) -> LakeFile | None:
        """The orphan whose last event this is (flush now, this event included, to reproduce it), else None.

        If the replay passed an orphan's last position without meeting it (the source no longer has that
        event), that orphan cannot be reproduced: strict, `ReplayMismatch`; otherwise it is dropped from the plan
        with a warning and the batch is cut here, so the cuts after it stay aligned.
        """
        due = None
        while self.cuts and position >= self.cuts[0].last:
            due = self.cuts.pop(0)
            if position != due.last:
                if self.strict:
                    raise ReplayMismatch(
                        f"replay passed the end ({show_position(due.last)}) of orphan {due.key} at "
                        f"({show_position(position)}) without meeting it: "
                        "the orphan cannot be reproduced, so the stream stops here instead of writing its events "
                        "under another key (nothing after the acknowledged position was acknowledged)")
                log.warning("replay passed the end %s of orphan %s at %s without meeting it: the lake may "
                            "hold duplicates of its events", due.last, due.key, position)
        return due
