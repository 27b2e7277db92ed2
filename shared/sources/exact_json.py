"""Exact JSON for the API sources: numbers are the Decimals of their text, items keep theirs."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from shared.sources.parsing import parse_decimal, parse_int, parse_timestamp


def _no_constant(name: str) -> None:
    # NaN/Infinity are not JSON; an upstream sending them has no usable value there.
    return None


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_int=Decimal, parse_constant=_no_constant)
_WHITESPACE = " \t\r\n"


@dataclass(frozen=True, slots=True)
class JsonItem:
    """One element of a JSON array: its exact text and its value (numbers as Decimal)."""

    text: str
    value: Any


class BodyError(ValueError):
    """A response body that is not valid JSON (possibly cut or corrupted on the way)."""


class ShapeError(BodyError):
    """Valid JSON, but not the shape asked for (e.g. an object where an array belongs)."""


def parse_json(text: str) -> Any:
    """Parse JSON with every number as the Decimal of its exact text (exponent form kept)."""
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise BodyError(f"invalid JSON at char {exc.pos}: {exc.msg}") from exc


def _skip_whitespace(text: str, pos: int) -> int:
    length = len(text)
    while pos < length and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def parse_json_array(text: str) -> list[JsonItem]:
    """Split a top-level JSON array into items, keeping each item's exact source text."""
    length = len(text)
    pos = _skip_whitespace(text, 0)
    if pos >= length or text[pos] != "[":
        kind = type(parse_json(text)).__name__  # raises BodyError when not JSON at all
        raise ShapeError(f"expected a JSON array, got {kind}")
    pos += 1
    items: list[JsonItem] = []
    expect_item = True
    while True:
        pos = _skip_whitespace(text, pos)
        if pos >= length:
            raise BodyError(f"invalid JSON at char {pos}: unterminated array")
        if text[pos] == "]" and (not items or not expect_item):
            pos += 1
            break
        if not expect_item:
            raise BodyError(f"invalid JSON at char {pos}: expected ',' or ']'")
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise BodyError(f"invalid JSON at char {exc.pos}: {exc.msg}") from exc
        items.append(JsonItem(text[pos:end], value))
        pos = _skip_whitespace(text, end)
        expect_item = pos < length and text[pos] == ","
        if expect_item:
            pos += 1
    if text[pos:].strip(_WHITESPACE):
        raise BodyError(f"invalid JSON at char {pos}: extra data after the array")
    return items


def to_decimal(value: Any) -> Decimal | None:
    """A JSON value as an exact Decimal: null and "" are None; numeric strings are accepted."""
    if isinstance(value, Decimal) and not value.is_finite():
        return None  # only NaN/Infinity constants get here, and they carry no value
    # JSON has no thousands separators: "1,5" must be an error, not 15.
    return parse_decimal(value, thousands_sep=None)


def to_int(value: Any) -> int | None:
    """A JSON value as an int (ranks); non-integral numbers are an error."""
    return parse_int(value)


def to_datetime(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as an aware UTC datetime; null/"" are None; garbage is an error."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {type(value).__name__}")
    return parse_timestamp(value)
