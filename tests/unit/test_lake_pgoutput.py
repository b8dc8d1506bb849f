"""The pgoutput v1 decoder on hand-built messages (the byte layouts of the protocol documentation)."""

from __future__ import annotations

import struct

import pytest

from bankflow.engines.builtin import pgoutput
from bankflow.engines.builtin.pgoutput import UNCHANGED, decode_message, resolve_unchanged
from tests.fixtures.pgoutput_messages import tuple_data


def test_begin_commit_times_are_unix_microseconds() -> None:
    begin = decode_message(b"B" + struct.pack(">QqI", 0x16B3A28, 1_000_000, 735))
    assert begin == pgoutput.Begin(0x16B3A28, pgoutput.PG_EPOCH_US + 1_000_000, 735)
    commit = decode_message(b"C" + struct.pack(">BQQq", 0, 0x16B3A28, 0x16B3A58, 5))
    assert commit == pgoutput.Commit(0, 0x16B3A28, 0x16B3A58, pgoutput.PG_EPOCH_US + 5)


def test_relation_flags_and_types() -> None:
    payload = (b"R" + struct.pack(">I", 16385) + b"public\0accounts\0" + b"f" + struct.pack(">h", 2)
               + b"\x01id\0" + struct.pack(">Ii", 20, -1) + b"\x01balance\0" + struct.pack(">Ii", 1700, 1310726))
    rel = decode_message(payload)
    assert rel.relid == 16385 and rel.namespace == "public" and rel.name == "accounts"
    assert rel.replica_identity == "f" and rel.column_names == ("id", "balance")
    assert all(c.is_key for c in rel.columns)  # FULL marks every column: keys come from the catalog
    assert rel.columns[1].type_oid == 1700


def test_insert_update_delete_tuples() -> None:
    ins = decode_message(b"I" + struct.pack(">I", 7) + b"N" + tuple_data(b"1", None, b"0.10"))
    assert ins == pgoutput.Insert(7, [b"1", None, b"0.10"])
    upd = decode_message(b"U" + struct.pack(">I", 7) + b"O" + tuple_data(b"1", b"old", b"x") + b"N"
                         + tuple_data(b"1", "u", b"y"))
    assert upd.old_kind == "O" and upd.old == [b"1", b"old", b"x"] and upd.new == [b"1", UNCHANGED, b"y"]
    plain = decode_message(b"U" + struct.pack(">I", 7) + b"N" + tuple_data(b"2"))
    assert plain.old_kind is None and plain.old is None and plain.new == [b"2"]
    dele = decode_message(b"D" + struct.pack(">I", 7) + b"K" + tuple_data(b"1", None, None))
    assert dele == pgoutput.Delete(7, "K", [b"1", None, None])


def test_truncate_origin_type_message() -> None:
    trunc = decode_message(b"T" + struct.pack(">iB", 2, 3) + struct.pack(">II", 7, 8))
    assert trunc.relids == (7, 8) and trunc.cascade and trunc.restart_identity
    assert decode_message(b"O" + struct.pack(">Q", 99) + b"node1\0") == pgoutput.Origin(99, "node1")
    assert decode_message(b"Y" + struct.pack(">I", 600) + b"public\0mood\0") == pgoutput.TypeMessage(
        600, "public", "mood")
    msg = decode_message(b"M\x01" + struct.pack(">Q", 5) + b"pfx\0" + struct.pack(">i", 2) + b"hi")
    assert msg == pgoutput.LogicalMessage(True, 5, "pfx", b"hi")


def test_unchanged_toast_comes_from_the_old_row_or_is_refused() -> None:
    names = ("id", "body", "n")
    resolved, reason = resolve_unchanged([b"1", UNCHANGED, b"2"], [b"1", b"big", b"1"], "O", names)
    assert resolved == [b"1", b"big", b"2"] and reason is None
    resolved, reason = resolve_unchanged([b"1", UNCHANGED, b"2"], None, None, names)
    assert reason is not None and "'body'" in reason and "REPLICA IDENTITY FULL" in reason
    _, reason = resolve_unchanged([b"1", UNCHANGED, b"2"], [b"1", None, None], "K", names)
    assert reason is not None


def test_protocol_errors_are_clear() -> None:
    with pytest.raises(pgoutput.ProtocolError, match="unknown pgoutput message"):
        decode_message(b"Z")
    with pytest.raises(pgoutput.ProtocolError, match="binary"):
        decode_message(b"I" + struct.pack(">I", 7) + b"N" + struct.pack(">h", 1) + b"b")
