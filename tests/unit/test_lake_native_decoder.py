"""The C decoder (`bankflow/lake/_envelope.c`): what it accepts decodes exactly as msgspec and the per-event path
decode it, and whatever it refuses still ends where the per-event path puts it."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

import bankflow.lake.native as native_module
from bankflow.lake import _envelope
from bankflow.lake.batch import TableBatch
from bankflow.lake.native import NativeDecoder
from bankflow.lake.positions import KafkaPosition
from bankflow.spec.models import Column, Table
from tests.fixtures.lake_types import ALL_TYPES
from tests.unit.test_lake_batch_bulk import _assert_same, _both, _event


def _native_count(values: list[Any]) -> int:
    return NativeDecoder(ALL_TYPES).decode(values)[0]


def _msgspec_only(values: list[bytes | str], monkeypatch: pytest.MonkeyPatch) -> TableBatch:
    with monkeypatch.context() as patch:
        patch.setattr(native_module, "extension", None)
        batch = TableBatch(ALL_TYPES)
        batch.append_debezium_values(values, [KafkaPosition(3, 100 + i) for i in range(len(values))])
    return batch


def _good_values() -> list[bytes | str]:
    events = [_event(n, op) for n, op in enumerate("cudrcc")]
    events[4]["after"]["t"] = 'quote " backslash \\ slash / \b\f\n\r\t \u0000 é 中 \U0001f600'
    del events[5]["source"]["ts_us"]  # ts_ms only
    values: list[bytes | str] = [orjson.dumps(e) for e in events]
    # escapes as other encoders write them, whitespace everywhere JSON allows it, a key order of its own
    values.append(b'{ "op" : "c" ,\n "after" : {"t": "\\u00e9\\u4e2d\\/", "id" : -9223372036854775808 ,'
                  b'"i":-0,"b":false,"s":null, "m":null,"m38":null,"v":null,"c":null,"d":null,"ts":null,'
                  b'"tstz":null,"u":null,"j":null,"raw":null,"tm":null},\t"source":{"lsn":7,"txId":null,"ts_us":-5,"x":[{"y":1e-3}]},'
                  b'"before":null, "extra": [true, false, null, "s", -1.5E+3, {}]\r}\n')
    return values


def test_the_c_decoder_is_built_and_used_for_every_supported_table() -> None:
    assert native_module.extension is _envelope
    assert NativeDecoder(ALL_TYPES).available
    floats = Table(name="f", primary_key=["id"], columns=[Column(name="id", type="bigint", nullable=False),
                                                          Column(name="x", type="double precision")])
    assert not NativeDecoder(floats).available  # msgspec reads those


def test_what_it_accepts_decodes_as_msgspec_and_the_per_event_path_do(monkeypatch: pytest.MonkeyPatch) -> None:
    values = _good_values()
    assert _native_count(values) == len(values)
    one, bulk = _both(values)
    _assert_same(one, bulk)
    assert not bulk.dead_letters and bulk.rows == len(values)
    assert bulk.to_arrow("k").equals(_msgspec_only(values, monkeypatch).to_arrow("k"))
    table = bulk.to_arrow("k")
    assert table["t"][4].as_py() == 'quote " backslash \\ slash / \b\f\n\r\t \u0000 é 中 \U0001f600'
    assert table["t"][6].as_py() == "é中/" and table["id"][6].as_py() == -2**63
    assert table["_op"].to_pylist() == list("cudrccc")


def test_an_image_without_a_column_of_the_table_is_refused_not_read_as_null() -> None:
    event = _event(0)
    del event["after"]["t"]
    assert _native_count([orjson.dumps(_event(1)), orjson.dumps(event)]) == 1
    batch = TableBatch(ALL_TYPES)  # without a schema-change policy to follow, it stays a row with t NULL
    batch.append_debezium_values([orjson.dumps(event)], [KafkaPosition(3, 1)])
    assert batch.rows == 1 and batch.to_arrow("k")["t"][0].as_py() is None


_GOOD = orjson.dumps(_event(0)).decode()
_AFTER = orjson.dumps(_event(0)["after"]).decode()
REFUSED: dict[str, bytes | str] = {
    "float for an integer": _GOOD.replace('"i":2147483647', '"i":1.0'),
    "exponent for an integer": _GOOD.replace('"i":2147483647', '"i":1e3'),
    "string for an integer": _GOOD.replace('"i":2147483647', '"i":"1"'),
    "boolean for an integer": _GOOD.replace('"i":2147483647', '"i":true'),
    "integer for a string": _GOOD.replace('"t":"hello"', '"t":1'),
    "integer for a boolean": _GOOD.replace('"b":true', '"b":1'),
    "beyond int64": _GOOD.replace('"i":2147483647', '"i":9223372036854775808'),
    "beyond int64, negative": _GOOD.replace('"i":2147483647', '"i":-9223372036854775809'),
    "twenty digits": _GOOD.replace('"i":2147483647', '"i":18446744073709551617'),
    "leading zero": _GOOD.replace('"i":2147483647', '"i":01'),
    "duplicate column": _GOOD.replace('"i":2147483647', '"i":1,"i":2'),
    "unknown column": _GOOD.replace('"i":2147483647', '"i":1,"nope":2'),
    "escaped column name": _GOOD.replace('"i":2147483647', '"\\u0069":1'),
    "surrogate pair escape": _GOOD.replace('"t":"hello"', '"t":"\\ud83d\\ude00"'),
    "lone surrogate escape": _GOOD.replace('"t":"hello"', '"t":"\\udc00"'),
    "bad escape": _GOOD.replace('"t":"hello"', '"t":"\\x41"'),
    "raw control character": _GOOD.replace('"t":"hello"', '"t":"a\tb"'),
    "trailing comma": _GOOD.replace('"i":2147483647', '"i":2147483647,'),
    "trailing garbage": _GOOD + "x",
    "two values": _GOOD + _GOOD,
    "schemas enabled": '{"schema":{"type":"struct"},"payload":' + _GOOD + "}",
    "no op": _GOOD.replace('"op":"c",', ""),
    "unknown op": _GOOD.replace('"op":"c"', '"op":"x"'),
    "escaped op": _GOOD.replace('"op":"c"', '"op":"\\u0063"'),
    "no source": '{"op":"c","after":' + _AFTER + "}",
    "null source": '{"op":"c","after":' + _AFTER + ',"source":null}',
    "no lsn": '{"op":"c","after":' + _AFTER + ',"source":{"txId":1}}',
    "float lsn": '{"op":"c","after":' + _AFTER + ',"source":{"lsn":1.5}}',
    "insert without after": '{"op":"c","after":null,"source":{"lsn":1}}',
    "delete without before": '{"op":"d","before":null,"after":' + _AFTER + ',"source":{"lsn":1}}',
    "after is a list": '{"op":"c","after":[1],"source":{"lsn":1}}',
    "deep nesting": '{"op":"c","x":' + "[" * 100 + "]" * 100 + ',"after":' + _AFTER + ',"source":{"lsn":1}}',
    "ts_ms * 1000 beyond int64": '{"op":"c","after":' + _AFTER + ',"source":{"lsn":1,"ts_ms":9223372036854776}}',
    "not an object": "[1, 2]",
    "empty": "",
}
_BAD_UTF8 = {
    "invalid UTF-8 byte": b"\xff",
    "overlong encoding": b"\xc0\x80",
    "UTF-8 encoded surrogate": b"\xed\xa0\x80",
    "beyond U+10FFFF": b"\xf4\x90\x80\x80",
    "truncated sequence": b"\xe4\xb8",
}


@pytest.mark.parametrize("name", [*REFUSED, *_BAD_UTF8])
def test_it_refuses_what_it_must_not_judge_and_the_python_paths_decide(name: str) -> None:
    if name in _BAD_UTF8:
        value: bytes | str = _GOOD.encode().replace(b'"t":"hello"', b'"t":"a' + _BAD_UTF8[name] + b'b"')
        assert value != _GOOD.encode()
    else:
        value = REFUSED[name].encode()
        assert value != _GOOD.encode()
    good = _GOOD.encode()
    assert _native_count([good, good]) == 2
    assert _native_count([good, value, good]) == 1  # stops at the refused value, looks no further
    one, bulk = _both([good, value, good])
    _assert_same(one, bulk)


def test_str_values_and_every_truncation_are_refused() -> None:
    good = _GOOD.encode()
    assert _native_count([_GOOD]) == 0  # str values go the msgspec way
    for cut in range(len(good)):
        assert _native_count([good[:cut]]) == 0, cut


def test_bad_arguments_raise() -> None:
    bounds = bytes(16)
    with pytest.raises(ValueError):
        _envelope.decode([], b"i", (), bounds)
    with pytest.raises(ValueError):
        _envelope.decode([], b"x", (b"a",), bounds)
    with pytest.raises(TypeError):
        _envelope.decode([], b"i", ("a",), bounds)
    with pytest.raises(ValueError):
        _envelope.decode([], b"i", (b"a",), bytes(8))


_INSERTS = [b'"', b"\\", b",", b"}", b"{", b"[", b"]", b":", b"1", b".", b"-", b"n", b" ", b"\t", b"null", b"true",
            b"-0", b"0.5", b"e5", b"E-2", b"1e999", b"99999999999999999999", b"\\u00e9", b"\\udc00",
            b"\\ud83d\\ude00", b"\xf0\x9f\x98\x80", b"\xc3", b"\x00", b'\\"', b'"op":"d",', b'"op":"r",',
            b'"after":null,', b'"before":null,', b'"i":1,', b'"id":2,', b'"lsn":3,', b'"ts_us":null,', b'"ts_ms":5,',
            b'"source":{"lsn":1},', b'"x":{"y":[1,2]},',
            # poison families (issue 14): out of a column's range, too long, negative positions, undatable
            # commit times, nesting beyond the bound
            b'"s":70000,', b'"i":1099511627776,', b'"d":1099511627776,', b'"tm":-1,', b'"ts":-9223372036854775807,',
            b'"v":"abcdefghijklmnopqrstu",', b'"c":"abcd",', b'"c":"ab     ",', b'"u":"nope",', b'"lsn":-1,',
            b'"txId":-1,', b'"ts_us":4611686018427387904,', b'"ts_ms":-4611686018427387,', b"[" * 70,
            b'"x":' + b"[" * 64 + b"]" * 64 + b",", b'"x":' + b"[" * 63 + b"]" * 63 + b",",
            b'"m":"' + b"9" * 500 + b'",']


def _mutate(value: bytes, rng: random.Random) -> bytes:
    """One to three edits: a deletion, an insertion anywhere or where a key starts, an overwrite."""
    data = bytearray(value)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data))
        choice = rng.random()
        insert = rng.choice(_INSERTS)
        if choice < 0.3:
            del data[at:at + rng.randint(1, 4)]
        elif choice < 0.7:
            data[at:at] = insert
        elif choice < 0.85:
            comma = bytes(data).find(b",", at)
            if comma >= 0:
                data[comma + 1:comma + 1] = insert
        else:
            data[at:at + len(insert)] = insert
    return bytes(data)


def test_random_corruptions_end_as_the_per_event_path_ends_them() -> None:
    """Every mutated value is decided by one path or the other; rows, dead letters and positions must match."""
    rng = random.Random(20261123)
    sources = [orjson.dumps(v) if isinstance(v, dict) else v for v in _good_values()]
    sources.append(b'{"schema":{"type":"struct","name":"x"},"payload":' + sources[1] + b"}")  # the C part refuses it
    values = [_mutate(rng.choice(sources), rng) if rng.random() < 0.7 else rng.choice(sources)
              for _ in range(3000)]
    one, bulk = _both(values)  # type: ignore[arg-type]
    _assert_same(one, bulk)
    assert 0 < len(bulk.dead_letters) < len(values) and bulk.rows > 900


def test_a_str_value_with_a_lone_surrogate_is_a_dead_letter_on_both_paths() -> None:
    lone = _GOOD.replace('"t":"hello"', '"t":"a\ud800b"')
    one, bulk = _both([_GOOD, lone, _GOOD])
    _assert_same(one, bulk)
    assert [d.position.offset for d in bulk.dead_letters] == [101] and bulk.rows == 2
