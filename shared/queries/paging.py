"""Paging: opaque keyset cursors, pages of rows, and the decimal sort keys cursors carry."""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal, InvalidOperation
from typing import Any, Callable, Sequence

from sqlalchemy import ColumnElement, Select, and_, func, or_, select, tuple_
from sqlalchemy.orm import Session

BIGINT_MAX = 2**63 - 1
# Room for a text sort key at its column's length (300 characters, each up to 6 bytes of JSON).
CURSOR_MAX_LENGTH = 3072

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


class InvalidCursor(ValueError):
    """A paging cursor that we did not issue, or that belongs to another query."""

    field = "cursor"


@dataclass(frozen=True)
class Page:
    """One page of rows, the total matching the filters, and the cursor of the next page."""

    rows: Sequence[Any]
    total: int | None  # None: not counted (GET /data counts only when asked)
    next_cursor: str | None


def encode_cursor(payload: dict[str, Any]) -> str:
    """An opaque cursor: base64url (unpadded) of compact JSON."""
    # Text keys as UTF-8, not \uXXXX escapes: a 300-character name stays within the length.
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True,
                     ensure_ascii=False).encode("utf-8")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(token: str, kind: str) -> dict[str, Any]:
    """The payload of a cursor issued by `encode_cursor` for a query of `kind`."""
    if not token or len(token) > CURSOR_MAX_LENGTH:
        raise InvalidCursor("cursor is empty or too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("cursor is not one this API issued") from exc
    if not isinstance(payload, dict) or payload.get("t") != kind:
        raise InvalidCursor("cursor is not one this API issued for this listing")
    return payload


def cursor_int(payload: dict[str, Any], key: str) -> int:
    """The id at `key` of a cursor's payload; InvalidCursor unless it fits a BIGINT."""
    value = payload.get(key)
    if type(value) is not int or not 0 <= value <= BIGINT_MAX:
        raise InvalidCursor(f"cursor field {key!r} is not a valid id")
    return value


def cursor_str(payload: dict[str, Any], key: str, max_length: int = 300) -> str:
    """The text at `key` of a cursor's payload; InvalidCursor if too long or holding a NUL."""
    value = payload.get(key)
    if not isinstance(value, str) or len(value) > max_length or "\x00" in value:
        raise InvalidCursor(f"cursor field {key!r} is not a valid string")
    return value


def cursor_datetime(payload: dict[str, Any], key: str) -> datetime:
    """The time-zone-aware timestamp at `key` of a cursor's payload."""
    value = cursor_str(payload, key, 64)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidCursor(f"cursor field {key!r} is not a timestamp") from exc
    if parsed.tzinfo is None:
        raise InvalidCursor(f"cursor field {key!r} has no time zone")
    return parsed


def keyset_after(
    column: Any, value: Any, descending: bool, nullable: bool,
    tiebreak: Sequence[Any], tiebreak_values: Sequence[Any],
) -> ColumnElement[bool]:
    """Rows after (value, tiebreak...) in `column dir NULLS LAST, tiebreak ASC` order."""
    after_tie = tuple_(*tiebreak) > tuple_(*tiebreak_values)
    if column is tiebreak[0] and value == tiebreak_values[0] and not descending:
        # Sorting by the key's own first column (GET /data's default): one row comparison is
        # an index range the planner estimates right. The general form below makes it guess
        # ~10% of the real row count and sort every remaining row (bench case 4, deep page).
        return after_tie
    if value is None:
        return and_(column.is_(None), after_tie)
    beyond = column < value if descending else column > value
    # The redundant bound (<= / >=) gives the planner an index range to start from; the OR
    # alone makes it scan from the first row and filter, so deep pages would cost more.
    bound = column <= value if descending else column >= value
    condition = and_(bound, or_(beyond, and_(column == value, after_tie)))
    return or_(condition, column.is_(None)) if nullable else condition


def time_bounds(
    column: Any, since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    """`since <= column <= until`, each bound only when given."""
    bounds: list[ColumnElement[bool]] = []
    if since:
        bounds.append(column >= since)
    if until:
        bounds.append(column <= until)
    return bounds


def count_rows(session: Session, query: Select[Any]) -> int:
    """How many rows `query` returns (its ordering dropped)."""
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    return int(total or 0)


def fetch_page(
    session: Session, query: Select[Any], counted: Select[Any], *, offset: int, limit: int,
    cursor_of: Callable[[Any], dict[str, Any]],
) -> Page:
    """One page of `query` and the count of `counted` (one extra row tells if more exist)."""
    rows, next_cursor = trim_page(list(session.scalars(query.offset(offset).limit(limit + 1))),
                                  limit, cursor_of)
    return Page(rows=rows, total=count_rows(session, counted), next_cursor=next_cursor)


def where_given(*pairs: tuple[Any, Any]) -> list[ColumnElement[bool]]:
    """`column == value` for each (column, value) pair whose value is given (not None or '')."""
    return [column == value for column, value in pairs if value is not None and value != ""]


def newest_first(
    session: Session, entity: Any, conditions: Sequence[ColumnElement[bool]], *, kind: str,
    created: Any = None, since: datetime | None = None, until: datetime | None = None,
    offset: int = 0, limit: int = 50, cursor: str | None = None, options: Sequence[Any] = (),
    ranges: Callable[[list[ColumnElement[bool]], int], Select[Any]] | None = None,
) -> Page:
    """One page of `entity` rows matching `conditions`, newest first (`id DESC`).

    `since <= created <= until` when given. Paged by offset, or by a cursor of `kind` carrying
    the last id shown (the offset is then ignored). `ranges(after, rows)` builds the rows'
    query instead, in the same order, where the plain one would read the wrong index: `after`
    is the cursor's bound (empty without one), and the page needs at most `rows` rows of it.
    """
    if created is not None:
        conditions = [*conditions, *time_bounds(created, since, until)]
    after: list[ColumnElement[bool]] = []
    if cursor is not None:
        after.append(entity.id < cursor_int(decode_cursor(cursor, kind), "id"))
        offset = 0
    if ranges is not None:
        query = ranges(after, offset + limit + 1)
    else:
        query = (select(entity).options(*options).where(*conditions, *after)
                 .order_by(entity.id.desc()))
    return fetch_page(session, query, select(entity).where(*conditions), offset=offset,
                      limit=limit, cursor_of=lambda row: {"t": kind, "id": row.id})


def trim_page(rows: list[Any], limit: int, cursor_of: Callable[[Any], dict[str, Any]]
              ) -> tuple[list[Any], str | None]:
    """Rows fetched with one extra: the page, and the cursor of its last row if more exist."""
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(cursor_of(rows[-1])) if more and rows else None)
