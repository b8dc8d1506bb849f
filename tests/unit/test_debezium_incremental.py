"""Rows of Debezium's incremental snapshot (bankflow's backfill on that engine) carry no `source.lsn`: every
decoding path takes the LSN of the snapshot window's close from `source.sequence`, the position Debezium emitted
the chunk at, so the row sorts after the changes of its key before the window and before the later ones."""

from __future__ import annotations

import orjson
import pytest

import bankflow.lake.native as native_module
from bankflow.lake.batch import TableBatch
from bankflow.lake.decode import incremental_snapshot_lsn
from bankflow.lake.positions import KafkaPosition
from tests.fixtures.lake_types import ALL_TYPES
from tests.unit.test_lake_batch_bulk import _event


def _incremental(n: int, close: int) -> dict[str, object]:
    event = _event(n, "r")
    source = event["source"]
    assert isinstance(source, dict)
    source.update({"lsn": None, "txId": None, "snapshot": "incremental", "sequence": f'["{close}","{close}"]'})
    return event


@pytest.mark.parametrize("path", ["per-event", "C bulk", "msgspec bulk"])
def test_an_incremental_snapshot_row_takes_the_window_close_lsn(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    events = [_event(0, "c"), _incremental(1, 28411640), _incremental(2, 28411640), _event(3, "u")]
    values = [orjson.dumps(e) for e in events]
    positions = [KafkaPosition(0, i) for i in range(len(values))]
    batch = TableBatch(ALL_TYPES)
    with monkeypatch.context() as patch:
        if path == "msgspec bulk":
            patch.setattr(native_module, "extension", None)
        if path == "per-event":
            for value, position in zip(values, positions, strict=True):
                batch.append_debezium_value(value, position)
        else:
            batch.append_debezium_values(values, positions)
        table = batch.to_arrow("k")
    assert not batch.dead_letters, [d.reason for d in batch.dead_letters]
    assert table["_op"].to_pylist() == ["c", "r", "r", "u"]
    assert table["_lsn"].to_pylist() == [900, 28411640, 28411640, 903]
    assert table["_tx_id"].to_pylist() == [77, None, None, 77]


@pytest.mark.parametrize("source", [
    {"snapshot": "incremental"},  # no sequence
    {"snapshot": "incremental", "sequence": "[]"},
    {"snapshot": "incremental", "sequence": '["1", "-5"]'},
    {"snapshot": "incremental", "sequence": '["1", 5]'},
    {"snapshot": "incremental", "sequence": "not json"},
    {"snapshot": "incremental", "sequence": '["1", "' + "9" * 30 + '"]'},
    {"snapshot": "false", "sequence": '["1", "2"]'},  # a streamed change must have its own lsn
])
def test_anything_else_without_an_lsn_stays_a_dead_letter(source: dict[str, object]) -> None:
    assert incremental_snapshot_lsn(source) is None
    event = _event(0, "r")
    base = {k: v for k, v in event["source"].items() if k != "sequence"}  # type: ignore[attr-defined]
    event["source"] = {**base, "lsn": None, **source}
    batch = TableBatch(ALL_TYPES)
    batch.append_debezium_value(orjson.dumps(event), KafkaPosition(0, 7))
    assert [d.reason for d in batch.dead_letters] == ["event has no source.lsn"]
