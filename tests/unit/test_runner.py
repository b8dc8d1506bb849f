"""The pieces of `bankflow run` that need no service: the transform cadence, the one-run lock, the newest commit
time read from a Parquet footer, and what the lake watch reports as pending."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bankflow.errors import BankflowError
from bankflow.runner import TransformCadence, one_run_at_a_time
from bankflow.spec.models import RunTransform
from bankflow.status import commit_range

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 12, 1, 12, 1, 30, tzinfo=UTC)


def test_interval_cadence_runs_first_at_start_then_every_interval() -> None:
    cadence = TransformCadence(RunTransform(every="30s"), T0)
    assert cadence.due(T0)
    cadence.done(T0)
    assert not cadence.due(T0 + dt.timedelta(seconds=29))
    assert cadence.due(T0 + dt.timedelta(seconds=30))


def test_after_changes_brings_the_transform_forward_and_resets() -> None:
    cadence = TransformCadence(RunTransform(every="1h", after_changes=1000), T0)
    cadence.done(T0)
    cadence.loaded({"transactions": 600, "accounts": 0})
    assert not cadence.due(T0 + dt.timedelta(seconds=1))
    cadence.loaded({"transactions": 400})
    assert cadence.due(T0 + dt.timedelta(seconds=2))
    assert cadence.start() == {"transactions"}  # a table whose load brought no rows did not change
    assert cadence.rows_since == 0 and not cadence.tables_since
    cadence.loaded({"accounts": 5})  # loaded while the transform runs: for the next one
    cadence.done(T0 + dt.timedelta(seconds=2))
    assert not cadence.due(T0 + dt.timedelta(seconds=3))
    assert cadence.start() == {"accounts"}


def test_cron_cadence_fires_on_the_next_matching_minute_in_utc() -> None:
    cadence = TransformCadence(RunTransform(every="*/5 * * * *"), T0)
    cadence.done(T0)
    assert cadence.next_at == dt.datetime(2026, 12, 1, 12, 5, tzinfo=UTC)
    assert not cadence.due(dt.datetime(2026, 12, 1, 12, 4, 59, tzinfo=UTC))
    assert cadence.due(dt.datetime(2026, 12, 1, 12, 5, tzinfo=UTC))


@pytest.mark.parametrize("every", ["soon", "5 minutes", "* * *", "-5s", "0s"])
def test_a_cadence_that_is_neither_interval_nor_cron_is_refused(every: str) -> None:
    with pytest.raises(ValueError, match="every"):
        RunTransform(every=every)


def test_a_second_run_of_the_same_pipeline_is_refused(tmp_path: Path) -> None:
    resolved = SimpleNamespace(state_dir=tmp_path / "state")
    with (one_run_at_a_time(resolved),  # type: ignore[arg-type]
          pytest.raises(BankflowError, match="another bankflow run of this pipeline is running"),
          one_run_at_a_time(resolved)):  # type: ignore[arg-type]
        pass
    with one_run_at_a_time(resolved):  # released with the first
        pass


def test_newest_commit_comes_from_the_footer_statistics(tmp_path: Path) -> None:
    stamps = [dt.datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC), dt.datetime(2026, 12, 1, 12, 0, 5, 7, tzinfo=UTC),
              dt.datetime(2026, 12, 1, 11, 59, 0, tzinfo=UTC)]
    table = pa.table({"id": [1, 2, 3], "_source_ts": pa.array(stamps, pa.timestamp("us", tz="UTC"))})
    path = tmp_path / "f.parquet"
    pq.write_table(table, path, row_group_size=2)
    # microseconds and zone kept, across row groups
    assert commit_range(pq.read_metadata(path)) == (stamps[2], stamps[1])
    pq.write_table(pa.table({"id": [1]}), path)
    assert commit_range(pq.read_metadata(path)) == (None, None)


def _file(table: str, stream: str, first: int, last: int) -> Any:
    from bankflow.lake.positions import LsnPosition, format_span
    from bankflow.runner import LakeFileInfo

    span = format_span(LsnPosition(first, first), LsnPosition(last, last))
    return LakeFileInfo(table, f"{table}/dt=2026-12-01/{stream}-{span}.parquet", 1, 1, None)


def test_a_load_takes_whole_transactions_across_tables() -> None:
    from bankflow.runner import consistent_files

    accounts_low, accounts_high = _file("accounts", "accounts", 100, 190), _file("accounts", "accounts", 200, 400)
    transactions = _file("transactions", "transactions", 150, 300)
    snapshot = _file("customers", "customers-snapshot", 50, 50)
    pending = {"accounts": [accounts_low, accounts_high], "transactions": [transactions], "customers": [snapshot]}
    # the cut (1000) is past every file: all load
    assert consistent_files(pending, 1000) == pending
    # the cut at 250 falls inside transactions' file (150..300): that file waits, so the point comes down to 150,
    # and accounts' 200..400 waits too; accounts' 100..190 straddles 150: it waits as well
    assert consistent_files(pending, 250) == {"customers": [snapshot]}
    # at 195 nothing straddles: accounts' 100..190 loads, transactions' 150..300 (reaching past) waits
    only_low = {"accounts": [accounts_low], "transactions": [_file("transactions", "transactions", 195, 300)]}
    assert consistent_files(only_low, 195) == {"accounts": [accounts_low]}
    # a snapshot file loads at its own position once the cut reaches it, not before
    assert consistent_files({"customers": [snapshot]}, 50) == {"customers": [snapshot]}
    assert consistent_files({"customers": [snapshot]}, 49) == {}
