"""Decimal sort keys of keyset cursors: written compactly, read back only within NUMERIC bounds."""
from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal, InvalidOperation

# What PostgreSQL's NUMERIC can hold: 131,072 digits before the point, 16,383 after. A cursor
# key beyond them is an error in the statement ("value overflows numeric format"), so such a
# key is refused as a bad cursor (422) before any SQL runs.
PG_NUMERIC_INTEGER_DIGITS = 131072
PG_NUMERIC_SCALE = 16383
# The longest decimal key text a cursor carries or accepts: plain notation up to this length,
# else scientific notation with at most KEY_SIGNIFICANT_DIGITS digits.
KEY_MAX_CHARS = 200
KEY_SIGNIFICANT_DIGITS = 180


class DecimalKeyError(ValueError):
    """A cursor's decimal key that is not a number NUMERIC can hold."""


def decimal_key(text: str, descending: bool) -> str:
    """The cursor text of a NUMERIC sort value (as PostgreSQL printed it), compact.

    Plain notation when short (as before); otherwise the normalized scientific form, which
    keeps a 1e300 market cap at 7 characters instead of 301 digits. A value with more
    significant digits than a cursor carries (only rows stored before input bounds existed)
    is rounded away from the rows still to come (down for an ascending sort, up for a
    descending one): the next page may then repeat rows of this value, but never skips one.
    """
    if len(text) <= KEY_MAX_CHARS:
        return text
    value = Decimal(text)
    compact = str(value.normalize(Context(prec=max(len(text), 1))))
    if len(compact) <= KEY_MAX_CHARS:
        return compact
    rounding = ROUND_CEILING if descending else ROUND_FLOOR
    rounded = value.normalize(Context(prec=KEY_SIGNIFICANT_DIGITS, rounding=rounding))
    return str(rounded)


def parse_decimal_key(value: object) -> Decimal:
    """The Decimal of a cursor's key; DecimalKeyError unless NUMERIC can hold it."""
    if not isinstance(value, str) or not 0 < len(value) <= KEY_MAX_CHARS:
        raise DecimalKeyError("not a decimal of at most %d characters" % KEY_MAX_CHARS)
    try:
        number = Decimal(value)
    except InvalidOperation as exc:
        raise DecimalKeyError("not a decimal") from exc
    if not number.is_finite():
        raise DecimalKeyError("not a finite decimal")
    if number != 0:
        exponent = number.as_tuple().exponent
        assert isinstance(exponent, int)
        if number.adjusted() >= PG_NUMERIC_INTEGER_DIGITS or exponent < -PG_NUMERIC_SCALE:
            raise DecimalKeyError("outside what the column can hold")
    return number
