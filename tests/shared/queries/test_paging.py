"""shared.queries.paging: opaque cursors, their field readers, pages, and decimal sort keys."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable

import pytest

from shared.queries.paging import (
    BIGINT_MAX,
    CURSOR_MAX_LENGTH,
    InvalidCursor,
    cursor_datetime,
    cursor_int,
    cursor_str,
    decimal_key,
    decode_cursor,
    encode_cursor,
    parse_decimal_key,
    trim_page,
)


def test_decimal_keys_are_compact_and_round_away_from_the_rows_to_come() -> None:
    """Plain when short, scientific when long; past 180 digits rounded toward repeats."""
    assert decimal_key("96114.08481738689", False) == "96114.08481738689"
    assert decimal_key("1" + "0" * 5000, True) == "1E+5000"
    assert parse_decimal_key("1E+5000") == Decimal("1e5000")
    long = "1." + "3" * 300
    up, down = Decimal(decimal_key(long, True)), Decimal(decimal_key(long, False))
    # Descending pages continue below the key, ascending ones above: rounding the other way
    # can only repeat rows of this value, never skip one.
    assert down < Decimal(long) < up
    assert len(decimal_key(long, True)) <= 200


def test_cursors_round_trip_and_refuse_another_listing() -> None:
    """A cursor decodes to its payload for its own kind only; forged or long ones are refused."""
    token = encode_cursor({"t": "runs", "id": 7, "n": "Ünïcode"})
    assert "=" not in token
    assert decode_cursor(token, "runs") == {"t": "runs", "id": 7, "n": "Ünïcode"}
    for bad, kind in ((token, "jobs"), ("", "runs"), ("!!!", "runs"),
                      ("A" * (CURSOR_MAX_LENGTH + 1), "runs"), (encode_cursor({"id": 7}), "runs")):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad, kind)


@pytest.mark.parametrize(("payload", "reader"), [
    ({"v": -1}, cursor_int), ({"v": BIGINT_MAX + 1}, cursor_int), ({"v": True}, cursor_int),
    ({"v": "1"}, cursor_int), ({"v": "a\x00b"}, cursor_str), ({"v": "x" * 301}, cursor_str),
    ({"v": 5}, cursor_str), ({"v": "2026-01-01T00:00:00"}, cursor_datetime),
    ({"v": "yesterday"}, cursor_datetime),
])
def test_cursor_fields_out_of_bounds_are_invalid_cursors(payload: dict[str, Any],
                                                         reader: Callable[..., Any]) -> None:
    """Ids beyond BIGINT, NULs, over-long text and naive or unparsable times name the field."""
    with pytest.raises(InvalidCursor, match="'v'") as caught:
        reader(payload, "v")
    assert caught.value.field == "cursor"


def test_cursor_fields_within_bounds_are_read() -> None:
    """The bounds themselves are accepted."""
    assert cursor_int({"v": BIGINT_MAX}, "v") == BIGINT_MAX
    assert cursor_str({"v": "x" * 300}, "v") == "x" * 300
    assert cursor_datetime({"v": "2026-01-01T00:00:00+00:00"}, "v") == datetime(
        2026, 1, 1, tzinfo=timezone.utc)


def test_trim_page_hands_out_a_cursor_only_when_more_rows_exist() -> None:
    """limit + 1 rows fetched: the extra one means a next page, keyed by the last row kept."""
    rows, token = trim_page([1, 2, 3], 2, lambda row: {"t": "x", "id": row})
    assert rows == [1, 2] and token is not None
    assert decode_cursor(token, "x") == {"t": "x", "id": 2}
    assert trim_page([1, 2], 2, lambda row: {"t": "x", "id": row}) == ([1, 2], None)
    assert trim_page([], 0, lambda row: {"t": "x", "id": row}) == ([], None)
