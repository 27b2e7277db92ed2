"""What the database columns can hold, read from the models: the one place every input check uses.

Text limits are the `varchar(n)` lengths of the columns a value lands in. The quote numbers are
unconstrained `NUMERIC` columns (migration 0001), which PostgreSQL bounds only at 131,072
digits before the point and 16,383 after: a value that large is stored, but it then breaks
everything that reads it back (a 6,748-character `/data` cursor, JSON clients that overflow).
So an unconstrained column is held to NUMERIC_DEFAULT_*, far above any price, market cap or
supply (fixtures top out at 15 digits before the point and 22 after); a column declared with a
precision and scale is held to those instead.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Integer, Numeric, SmallInteger, String

from shared.models import Asset, AssetSourceId, CurrentQuote, Quote

# What an unconstrained NUMERIC column is held to: digits before and after the point.
NUMERIC_DEFAULT_INTEGER_DIGITS = 30
NUMERIC_DEFAULT_SCALE = 40


def _length(*columns: Any) -> int:
    """The smallest varchar length of these columns (a value must fit all of them)."""
    lengths = [c.type.length for c in columns if isinstance(c.type, String) and c.type.length]
    if not lengths:
        raise TypeError("bounded text columns expected")
    return min(lengths)


def _numeric(columns: list[Any]) -> tuple[int, int]:
    """(digits before the point, digits after it) that every one of `columns` holds."""
    integer_digits, scale = [], []
    for column in columns:
        kind = column.type
        if kind.precision is None:
            integer_digits.append(NUMERIC_DEFAULT_INTEGER_DIGITS)
            scale.append(NUMERIC_DEFAULT_SCALE)
        else:
            integer_digits.append(kind.precision - (kind.scale or 0))
            scale.append(kind.scale or 0)
    return min(integer_digits), min(scale)


def _integer_max(column: Any) -> int:
    """The largest value of an integer column (int2 / int4)."""
    return 2**15 - 1 if isinstance(column.type, SmallInteger) else 2**31 - 1


SLUG_MAX = _length(Asset.slug)
SYMBOL_MAX = _length(Asset.symbol, AssetSourceId.symbol, CurrentQuote.symbol)
NAME_MAX = _length(Asset.name, AssetSourceId.name, CurrentQuote.name)
SOURCE_ASSET_ID_MAX = _length(
    AssetSourceId.source_asset_id, Quote.source_asset_id, CurrentQuote.source_asset_id)

QUOTE_NUMERIC_COLUMNS = [c for c in Quote.__table__.columns if isinstance(c.type, Numeric)] + [
    c for c in CurrentQuote.__table__.columns if isinstance(c.type, Numeric)]
NUMERIC_INTEGER_DIGITS, NUMERIC_SCALE = _numeric(QUOTE_NUMERIC_COLUMNS)
assert isinstance(Quote.__table__.c.rank.type, Integer)
RANK_MAX = _integer_max(Quote.__table__.c.rank)

# A CSV cell longer than this cannot become any stored value (the longest text column, with
# room for padding, quotes and thousands separators): it is rejected without being parsed.
CELL_MAX_CHARS = 4 * max(NAME_MAX, SOURCE_ASSET_ID_MAX, NUMERIC_INTEGER_DIGITS + NUMERIC_SCALE)
# A CSV line is read at most this far (then rejected and skipped to its end): room for the
# widest format (13 cells) at CELL_MAX_CHARS characters of up to 4 UTF-8 bytes each.
LINE_MAX_BYTES = 64 * 1024
CSV_MAX_COLUMNS = 13
assert CSV_MAX_COLUMNS * CELL_MAX_CHARS * 4 <= LINE_MAX_BYTES


def numeric_problem(value: Decimal) -> str | None:
    """Why a finite Decimal cannot be stored in a quote's NUMERIC column, or None if it can."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    # Digits before the point, leading zeros excluded (Decimal keeps none for an integer part).
    integer_digits = len(digits) + exponent if value != 0 else 0
    if integer_digits > NUMERIC_INTEGER_DIGITS:
        return f"out of range (more than {NUMERIC_INTEGER_DIGITS} digits before the point)"
    if -exponent > NUMERIC_SCALE:
        return f"too precise (more than {NUMERIC_SCALE} digits after the point)"
    return None


def rank_problem(value: int) -> str | None:
    """Why an integer cannot be stored as a rank, or None if it can."""
    if not -RANK_MAX - 1 <= value <= RANK_MAX:
        return f"out of range (at most {RANK_MAX})"
    return None


def text_problem(value: str, limit: int, what: str) -> str | None:
    """Why `value` cannot be stored in a varchar(`limit`) column, or None if it can."""
    if "\x00" in value:
        return f"{what} contains a NUL character"
    if len(value) > limit:
        return f"{what} longer than {limit} characters"
    return None


def asset_text_problem(source_asset_id: str, symbol: str, name: str | None) -> str | None:
    """Why a record's coin id, symbol or name cannot be stored, or None if they can."""
    return (text_problem(symbol, SYMBOL_MAX, "symbol")
            or (text_problem(name, NAME_MAX, "name") if name is not None else None)
            or text_problem(source_asset_id, SOURCE_ASSET_ID_MAX, "id"))
