"""verify's comparison: exact to the cent, indifferent to driver representations, streaming."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from bankflow.verify import compare, row_normaliser

UTC = dt.timezone.utc
ROW = (1, Decimal("1.50"), dt.datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=UTC), "USD", {"b": 1, "a": [1, 2]},
       uuid.UUID(int=5), b"\x00\xff", dt.date(2024, 1, 2))


def chunks(*rows: tuple) -> list[list[tuple]]:
    return [list(rows[:1]), list(rows[1:])]


def test_equal_values_in_other_driver_forms_match() -> None:
    other = (Decimal(1), Decimal("1.5"),
             dt.datetime(2024, 1, 1, 13, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1))),
             "USD  ", '{"a": [1, 2], "b": 1}', str(uuid.UUID(int=5)), memoryview(b"\x00\xff"), dt.date(2024, 1, 2))
    result = compare("t", lambda: chunks(ROW), lambda: chunks(other), row_normaliser([4], char_columns=[3]))
    assert result.ok and result.source_rows == result.warehouse_rows == 1


def test_strings_compare_exactly_except_the_padding_of_char_columns() -> None:
    padded = (*ROW[:3], "USD  ", *ROW[4:])
    assert not compare("t", lambda: chunks(ROW), lambda: chunks(padded), row_normaliser([4])).ok  # text: data
    assert compare("t", lambda: chunks(ROW), lambda: chunks(padded), row_normaliser([4], [3])).ok  # char(n)
    leading = (*ROW[:3], " USD", *ROW[4:])
    assert not compare("t", lambda: chunks(ROW), lambda: chunks(leading), row_normaliser([4], [3])).ok


def test_one_cent_is_a_difference_with_samples() -> None:
    off = (1, Decimal("1.51"), *ROW[2:])
    result = compare("t", lambda: chunks(ROW), lambda: chunks(off), row_normaliser([4]))
    assert not result.ok
    assert "Decimal('1.50')" in result.missing_in_warehouse[0]
    assert "Decimal('1.51')" in result.unexpected_in_warehouse[0]


def test_a_microsecond_is_a_difference() -> None:
    later = (ROW[0], ROW[1], ROW[2] + dt.timedelta(microseconds=1), *ROW[3:])
    assert not compare("t", lambda: chunks(ROW), lambda: chunks(later), row_normaliser([4])).ok


def test_duplicates_count_as_differences() -> None:
    result = compare("t", lambda: chunks(ROW), lambda: chunks(ROW, ROW), row_normaliser([4]))
    assert not result.ok and result.warehouse_rows == 2 and len(result.unexpected_in_warehouse) == 1


def test_many_rows_across_chunks() -> None:
    rows = [(i, Decimal(i) / 100) for i in range(10_000)]
    source = [rows[i:i + 777] for i in range(0, len(rows), 777)]
    warehouse = [list(reversed(rows))]
    assert compare("t", lambda: source, lambda: warehouse).ok
    missing = [rows[:-1]]
    result = compare("t", lambda: source, lambda: missing)
    assert not result.ok and result.missing_in_warehouse == [repr((9999, Decimal("99.99")))]
