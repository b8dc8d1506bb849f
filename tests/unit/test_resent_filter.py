"""Changes Debezium produces twice (a Kafka Connect restart) are kept once: `ResentFilter` drops a row whose
(key, _lsn, _op) is in the partition's recent files or earlier in its batch, and nothing else."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from bankflow.engines.debezium.resent import ResentFilter, identities
from bankflow.lake.positions import KafkaPosition
from bankflow.lake.writer import LakeFile


def rows(*changes: tuple[int, int, str]) -> pa.Table:
    """(id, _lsn, _op) rows with a payload column that differs per row."""
    return pa.table({"id": [c[0] for c in changes], "label": [f"v{i}" for i, _ in enumerate(changes)],
                     "_op": [c[2] for c in changes], "_lsn": pa.array([c[1] for c in changes], pa.int64())})


def test_identities_tell_rows_apart_by_key_lsn_and_op_only() -> None:
    ids = identities(rows((1, 10, "c"), (1, 10, "c"), (1, 10, "u"), (1, 11, "c"), (2, 10, "c")), ["id"])
    assert ids[0] == ids[1] and len(set(ids.to_pylist())) == 4
    # no two different keys join to the same text (lengths go first)
    composite = pa.table({"a": ["x\x1f1", "x"], "b": ["2", "1\x1f2"], "_op": ["c", "c"], "_lsn": [5, 5]})
    assert len(set(identities(composite, ["a", "b"]).to_pylist())) == 2


def test_a_resent_run_is_dropped_and_new_changes_are_kept() -> None:
    window = ResentFilter(["id"])
    first, dropped = window.filter(rows((1, 10, "c"), (2, 10, "c"), (3, 11, "c"), (1, 12, "u")))
    assert dropped == 0 and first.num_rows == 4
    window.written()
    # Debezium restarted two changes back: those two again, then new ones (one of them at an LSN seen before,
    # for another key: a multi-row insert shares its WAL record's LSN)
    again, dropped = window.filter(rows((3, 11, "c"), (1, 12, "u"), (4, 10, "c"), (1, 13, "d"), (4, 10, "c")))
    assert dropped == 3
    assert again.column("id").to_pylist() == [4, 1] and again.column("_op").to_pylist() == ["c", "d"]
    assert again.column("label").to_pylist() == ["v2", "v3"]  # the first copy of each, in order


def test_the_window_is_whole_recent_files_and_a_restart_rebuilds_it_from_the_lake(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    live = ResentFilter(["id"], window_rows=4)
    files = []
    for n in range(4):  # files of 3 rows: the window keeps the newest two (6 rows ≥ 4, one file alone is 3)
        table, _ = live.filter(rows(*[(n * 3 + i, 100 + n, "c") for i in range(3)]))
        live.written()
        key = str(tmp_path / f"t-p00000-{n * 3:020d}-{n * 3 + 2:020d}.parquet")
        pq.write_table(table, key)
        files.append(LakeFile(key, "t", KafkaPosition(0, n * 3), KafkaPosition(0, n * 3 + 2)))
    assert len(live.files) == 2
    restarted = ResentFilter(["id"], window_rows=4)
    restarted.load(fs, files, start=12)
    probe = rows((0, 100, "c"), (7, 102, "c"), (10, 103, "c"), (99, 1, "c"))
    assert live.filter(probe)[1] == restarted.filter(probe)[1] == 2  # 0 fell out of the window, 7 and 10 did not
    # resumed before the last file (an orphan to reproduce): the window is the files before it
    earlier = ResentFilter(["id"], window_rows=4)
    earlier.load(fs, files, start=9)
    assert earlier.filter(rows((10, 103, "c")))[1] == 0 and earlier.filter(rows((7, 102, "c")))[1] == 1


def test_a_change_committed_after_a_snapshot_row_of_its_key_sorts_after_it() -> None:
    """A transaction changed key 21 before Debezium read its chunk (change LSN 900) and committed after the
    chunk was emitted at LSN 1000: it comes later in the partition, and must win over the snapshot row."""
    window = ResentFilter(["id"])
    first, _ = window.filter(rows((21, 1000, "r"), (22, 1000, "r"), (30, 990, "u")))
    assert first.column("_lsn").to_pylist() == [1000, 1000, 990]
    window.written()
    later, dropped = window.filter(rows((21, 900, "u"), (22, 1300, "u"), (31, 950, "u"), (21, 1400, "d")))
    assert dropped == 0
    assert later.column("_lsn").to_pylist() == [1001, 1300, 950, 1400]
    # inside one batch too, and a copy Debezium sends again still matches the original (unchanged) identity
    window.written()
    again, dropped = window.filter(rows((21, 900, "u"), (40, 500, "r"), (40, 400, "u")))
    assert dropped == 1 and again.column("_lsn").to_pylist() == [500, 501]
