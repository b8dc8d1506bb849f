"""The C decoder (`_envelope.c`) for one table: Debezium JSON values → Arrow arrays, no Python object per value.

`extension` is the compiled module, or None in a source tree that was never built: then msgspec does all the
bulk work (`bankflow.lake.decode`), about a third as fast.
"""

from __future__ import annotations

import struct
from typing import Any

import pyarrow as pa

from bankflow.lake.convert import INT64_BOUNDS, json_input_type, json_int_bounds, json_python_type
from bankflow.spec.models import Table

try:  # built with the package (C extension); without it the msgspec path does all the work, slower
    from bankflow.lake import _envelope as extension
except ImportError:  # pragma: no cover - a source tree that was never built
    extension = None  # type: ignore[assignment]

_KINDS = {int: "i", bool: "b", str: "s"}  # json_python_type → the C decoder's column kind


class NativeDecoder:
    """The C decoder for one table: Debezium JSON values → Arrow arrays of `json_input_type`.

    It accepts a strict subset of what msgspec accepts (no floats, no surrogate escapes, no duplicate or escaped
    keys, no schemas-enabled wrapper, no integer outside its column's `json_int_bounds`, no negative position,
    no commit time a file key cannot date) and returns how many leading values it decoded; the caller sends the
    rest elsewhere. `available` is False for a table with a column kind it does not read (real, double).
    """

    def __init__(self, table: Table) -> None:
        kinds = [_KINDS.get(json_python_type(c.pg_type)) for c in table.columns]
        self.available = extension is not None and None not in kinds
        self._kinds = "".join(k or "?" for k in kinds).encode()
        self._names = tuple(c.name.encode() for c in table.columns)
        self._bounds = b"".join(struct.pack("=qq", *(json_int_bounds(c.pg_type) or INT64_BOUNDS))
                                for c in table.columns)
        self._input_types = [json_input_type(c.pg_type) for c in table.columns]

    def decode(self, values: list[bytes | str]) -> tuple[int, list[pa.Array], int | None]:
        """(how many leading values decoded, their column arrays: the table's in `json_input_type`, then _op,
        _lsn, _tx_id and the source ts_us as int64, first ts_us)."""
        count, columns, ops, lsn, tx, ts = extension.decode(values, self._kinds, self._names, self._bounds)
        if not count:
            return 0, [], None
        arrays = [self._column(kind, input_type, column, count)
                  for kind, input_type, column in zip(self._kinds, self._input_types, columns, strict=True)]
        ts_us = _int64s(count, ts)
        arrays += [pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(ops[0]), pa.py_buffer(ops[1])]),
                   _int64s(count, (None, lsn, 0)), _int64s(count, tx), ts_us]
        return count, arrays, ts_us[0].as_py()

    @staticmethod
    def _column(kind: int, input_type: pa.DataType, column: tuple[Any, ...], count: int) -> pa.Array:
        """One column's buffers (validity, [offsets,] data, null count) as an Arrow array."""
        if kind == ord("s"):
            valid, offsets, data, nulls = column
            return pa.Array.from_buffers(pa.string(), count, [_buffer(valid), pa.py_buffer(offsets),
                                                              pa.py_buffer(data)], null_count=nulls)
        if kind == ord("b"):
            valid, data, nulls = column
            return pa.Array.from_buffers(pa.bool_(), count, [_buffer(valid), pa.py_buffer(data)], null_count=nulls)
        arr = _int64s(count, column)
        if input_type != pa.int64():
            arr = arr.cast(input_type)  # safe, and never raises: the C decoder refuses what is out of bounds
        return arr


def _buffer(data: bytes | None) -> pa.Buffer | None:
    return None if data is None else pa.py_buffer(data)


def _int64s(count: int, column: tuple[Any, ...]) -> pa.Array:
    valid, data, nulls = column
    return pa.Array.from_buffers(pa.int64(), count, [_buffer(valid), pa.py_buffer(data)], null_count=nulls)
