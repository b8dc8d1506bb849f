"""One replay mechanism for both engines: `ReplayPlan.resume` with LSN and Kafka positions."""

from __future__ import annotations

import logging

import pytest

from bankflow.lake.positions import KafkaPosition, LsnPosition
from bankflow.lake.replay import ReplayMismatch, ReplayPlan, kafka_resume, lsn_resume
from bankflow.lake.writer import LakeFile


def lsn_file(first: tuple[int, int], last: tuple[int, int]) -> LakeFile:
    return LakeFile(f"lsn-{first}-{last}", "t", LsnPosition(*first), LsnPosition(*last))


def kafka_file(partition: int, first: int, last: int) -> LakeFile:
    return LakeFile(f"p{partition}-{first}-{last}", "topic", KafkaPosition(partition, first),
                    KafkaPosition(partition, last))


def test_a_transaction_is_acknowledged_when_its_commit_lsn_is_before_the_confirmed_flush_lsn() -> None:
    # confirmed flush LSN 30 is the end of the transaction that committed at 25
    files = [lsn_file((10, 1), (25, 9)), lsn_file((25, 10), (40, 3)), lsn_file((30, 1), (30, 8)),
             lsn_file((40, 4), (50, 2))]
    plan = ReplayPlan.resume(files, lsn_resume(30))
    assert [f.key for f in plan.cuts] == [files[2].key, files[3].key]
    assert plan.skip_until == LsnPosition(40, 3)  # the second file straddles: its unacknowledged part is durable
    assert plan.skip(LsnPosition(30, 1)) and plan.skip(LsnPosition(40, 3))
    assert not plan.skip(LsnPosition(40, 4)) and plan.skip_until is None


def test_kafka_plans_are_per_partition_and_resume_at_the_committed_offset() -> None:
    files = [kafka_file(0, 0, 99), kafka_file(0, 100, 199), kafka_file(1, 0, 49), kafka_file(1, 50, 80)]
    p0 = ReplayPlan.resume(files, kafka_resume(0, 100))
    assert [f.key for f in p0.cuts] == ["p0-100-199"] and p0.skip_until is None
    p1 = ReplayPlan.resume(files, kafka_resume(1, 60))
    assert not p1.cuts and p1.skip_until == KafkaPosition(1, 80)
    assert not ReplayPlan.resume(files, kafka_resume(2, 0)).active  # no file of partition 2
    assert not ReplayPlan.resume(files, kafka_resume(0, 200)).active  # everything committed


def test_files_of_another_position_kind_are_not_part_of_the_stream() -> None:
    files = [lsn_file((10, 1), (20, 1)), kafka_file(0, 0, 9)]
    assert [f.key for f in ReplayPlan.resume(files, kafka_resume(0, 0)).cuts] == ["p0-0-9"]
    assert [f.key for f in ReplayPlan.resume(files, lsn_resume(0)).cuts] == [files[0].key]


def test_cuts_fall_exactly_on_each_orphans_last_position() -> None:
    plan = ReplayPlan.resume([kafka_file(0, 0, 2), kafka_file(0, 3, 5)], kafka_resume(0, 0))
    due = [plan.cut_due(KafkaPosition(0, offset)) for offset in range(6)]
    assert [d.key if d else None for d in due] == [None, None, "p0-0-2", None, None, "p0-3-5"]
    assert not plan.active


def test_a_replay_that_passes_an_orphans_end_cuts_there_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    plan = ReplayPlan.resume([kafka_file(0, 0, 2), kafka_file(0, 3, 4), kafka_file(0, 5, 9)], kafka_resume(0, 0))
    with caplog.at_level(logging.WARNING, logger="bankflow.lake.replay"):
        due = plan.cut_due(KafkaPosition(0, 6))  # offsets 2..5 never came back (retention, compaction)
    assert due is not None and due.key == "p0-3-4" and [f.key for f in plan.cuts] == ["p0-5-9"]
    assert "may hold duplicates" in caplog.text
    assert "p0-0-2" in caplog.text and "p0-3-4" in caplog.text


def seq_file(first: tuple[int, int, int], last: tuple[int, int, int]) -> LakeFile:
    return LakeFile(f"seq-{first}-{last}", "t", LsnPosition(*first), LsnPosition(*last))


def test_rows_at_one_lsn_are_cut_and_skipped_exactly_by_their_index() -> None:
    """A multi-insert puts many rows at one change LSN: without `seq` a cut fired at the first of them and a skip
    swallowed all of them."""
    straddling = seq_file((10, 5, 0), (20, 7, 3))  # ends in the middle of the rows at LSN 7
    orphans = [seq_file((20, 7, 4), (20, 7, 8)), seq_file((20, 7, 9), (20, 9, 12))]
    plan = ReplayPlan.resume([straddling, *orphans], lsn_resume(15), strict=True)
    events = [LsnPosition(20, 7, i) for i in range(10)] + [LsnPosition(20, 9, i) for i in range(10, 13)]
    skipped = [e for e in events if plan.skip(e)]
    assert skipped == events[:4] and plan.skip_until is None
    cuts = [(e, due.key) for e in events[4:] if (due := plan.cut_due(e)) is not None]
    assert cuts == [(LsnPosition(20, 7, 8), orphans[0].key), (LsnPosition(20, 9, 12), orphans[1].key)]
    assert not plan.active


def test_a_strict_plan_stops_when_an_orphans_end_never_comes() -> None:
    plan = ReplayPlan.resume([seq_file((20, 7, 0), (20, 7, 4))], lsn_resume(15), strict=True)
    assert plan.cut_due(LsnPosition(20, 7, 3)) is None
    with pytest.raises(ReplayMismatch, match="without meeting it"):
        plan.cut_due(LsnPosition(20, 8, 5))


def test_a_strict_plan_stops_when_a_straddling_files_end_never_comes() -> None:
    plan = ReplayPlan.resume([seq_file((10, 5, 0), (20, 7, 3))], lsn_resume(15), strict=True)
    assert plan.skip(LsnPosition(20, 7, 0))
    with pytest.raises(ReplayMismatch, match="straddling file"):
        plan.skip(LsnPosition(20, 8, 1))  # seq 1..3 never came: the rows after them cannot be lined up


def test_a_plan_that_is_not_strict_still_warns_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    plan = ReplayPlan.resume([seq_file((10, 5, 0), (20, 7, 3))], lsn_resume(15))
    assert plan.skip(LsnPosition(20, 7, 0)) and not plan.skip(LsnPosition(20, 8, 1)) and not plan.active
