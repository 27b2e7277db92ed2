"""shared.queries.paging: the decimal sort keys cursors carry."""
from __future__ import annotations

from decimal import Decimal

from shared.queries.paging import decimal_key, parse_decimal_key


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
