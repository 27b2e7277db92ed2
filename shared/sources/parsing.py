"""Pure parsers for the values sources send: exact decimals and UTC timestamps."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

from shared.bounds import numeric_problem, rank_problem

# Cells that mean "no value" in the CSV exports we meet.
_MISSING = {"", "-", "null", "none", "nan", "n/a"}


# How much of a bad value a reject reason quotes: reasons stay short whatever was sent.
_SHOWN_CHARS = 40


class ValueParseError(ValueError):
    """A cell or field could not be read as the type it must have."""


def shown(value: object) -> str:
    """`value` quoted for a reject reason: repr (escapes control characters), cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def parse_decimal(value: object, *, thousands_sep: str | None = ",") -> Decimal | None:
    """Read a number exactly (no float); missing markers give None, junk raises.

    Every number read here is stored in a quote's NUMERIC column: one it cannot hold (see
    shared.bounds) raises too, so the record is rejected instead of failing its batch.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueParseError(f"not a number: {shown(value)}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        return Decimal(value)
    elif isinstance(value, float):
        # Only reached when a caller parsed JSON without parse_float=Decimal; repr is the
        # shortest text that round-trips, i.e. what was sent.
        result = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip()
        if text.lower() in _MISSING:
            return None
        if thousands_sep and thousands_sep in text:
            text = text.replace(thousands_sep, "")
        text = text.replace("_", "x")  # Decimal() accepts underscores; we do not.
        try:
            result = Decimal(text)
        except InvalidOperation as exc:
            raise ValueParseError(f"not a number: {shown(value)}") from exc
    else:
        raise ValueParseError(f"not a number: {shown(value)}")
    if not result.is_finite():
        raise ValueParseError(f"not a finite number: {shown(value)}")
    problem = numeric_problem(result)
    if problem is not None:
        raise ValueParseError(f"{shown(value)} is {problem}")
    return result


def parse_int(value: object) -> int | None:
    """Read an integer (e.g. a rank); '12.0' is accepted, '12.5' is not."""
    number = parse_decimal(value)
    if number is None:
        return None
    if number != number.to_integral_value():
        raise ValueParseError(f"not an integer: {shown(value)}")
    problem = rank_problem(int(number))
    if problem is not None:
        raise ValueParseError(f"{shown(value)} is {problem}")
    return int(number)


_FORMATS = (
    "%Y-%m-%dT%H:%M:%S.%f%z",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S.%f%z",
    "%Y-%m-%d %H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d",
)


def parse_timestamp(value: object) -> datetime:
    """Read a timestamp as an aware UTC datetime; naive values are taken as UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value.strip():
        text = value.strip().strip('"')
        if text.endswith(" UTC"):
            text = text[:-4] + "+00:00"
        elif text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            for fmt in _FORMATS:
                try:
                    parsed = datetime.strptime(text, fmt)
                    break
                except ValueError:
                    continue
            else:
                raise ValueParseError(f"not a timestamp: {shown(value)}") from None
    else:
        raise ValueParseError(f"missing timestamp: {shown(value)}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # 9999-12-31T23:00-05:00 is past the last UTC datetime
        raise ValueParseError(f"timestamp out of range: {shown(value)}") from None
