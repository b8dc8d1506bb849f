"""Debezium's `__debezium_unavailable_value` (an unchanged TOAST value it could not read under REPLICA IDENTITY
DEFAULT) is never carried as a value: on every decoding path the event is a dead letter that says why."""

from __future__ import annotations

import orjson
import pytest

import bankflow.lake.native as native_module
from bankflow.lake.batch import TableBatch
from bankflow.lake.positions import KafkaPosition
from tests.fixtures.lake_types import ALL_TYPES
from tests.unit.test_lake_batch_bulk import _event


def _values() -> list[bytes]:
    events = [_event(n, op) for n, op in enumerate("cucuc")]
    events[1]["after"]["t"] = "__debezium_unavailable_value"
    events[3]["after"]["j"] = "__debezium_unavailable_value"
    return [orjson.dumps(e) for e in events]


@pytest.mark.parametrize("path", ["per-event", "C bulk", "msgspec bulk"])
def test_the_placeholder_is_a_dead_letter_on_every_path(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    values = _values()
    positions = [KafkaPosition(0, 10 + i) for i in range(len(values))]
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
    assert table["id"].to_pylist() == [1, 3, 5]
    assert [d.position.offset for d in batch.dead_letters] == [11, 13]
    assert all("__debezium_unavailable_value" in d.reason and "REPLICA IDENTITY FULL" in d.reason
               for d in batch.dead_letters), [d.reason for d in batch.dead_letters]


def test_the_dead_letter_store_keeps_what_json_cannot_hold() -> None:
    from bankflow.lake.deadletter import DeadLetter, dead_letter_line

    deep: list[object] = []
    for _ in range(300):
        deep = [deep]
    for event in ({"after": {"t": "lone \ud800 surrogate"}}, {"after": {"x": deep}}):
        line = orjson.loads(dead_letter_line(DeadLetter("t", KafkaPosition(0, 1), "why", event)))
        assert line["reason"] == "why" and line["position"] == {"partition": 0, "offset": 1}
        assert isinstance(line["event"], str) and "JSON cannot hold it" in line["event_note"]
