"""GET /data: filters, sort keys and keyset pages of current records, read in one snapshot."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Sequence

from sqlalchemy import (
    ColumnElement, Connection, Select, Text, and_, func, or_, select, table,
)
from sqlalchemy import column as table_column
from sqlalchemy.orm import InstrumentedAttribute, Session

from shared.models import Asset, CurrentQuote
from shared.queries.assets import split_asset_refs
from shared.queries.paging import (
    DecimalKeyError,
    InvalidCursor,
    Page,
    cursor_datetime,
    cursor_int,
    cursor_str,
    decimal_key,
    decode_cursor,
    keyset_after,
    parse_decimal_key,
    time_bounds,
    trim_page,
)

# Sort fields of GET /data; every one is backed by a column of current_quotes.
DATA_SORT_FIELDS: tuple[str, ...] = (
    "asset_id", "symbol", "name", "source", "price_usd", "market_cap_usd", "volume_24h_usd",
    "rank", "observed_at",
)
_DATA_SORT_COLUMNS: dict[str, InstrumentedAttribute[Any]] = {
    name: getattr(CurrentQuote, name) for name in DATA_SORT_FIELDS
}
_NULLABLE_SORT_FIELDS = frozenset({"price_usd", "market_cap_usd", "volume_24h_usd", "rank"})
_DECIMAL_SORT_FIELDS = frozenset({"price_usd", "market_cap_usd", "volume_24h_usd"})
_INT_SORT_FIELDS = frozenset({"asset_id", "rank"})

# The record of GET /data, in the order of the select below. Money is cast to text in SQL:
# PostgreSQL prints numeric in plain notation with its stored scale, exactly the string
# format(Decimal(value), "f") gave, without building a Decimal per value.
DATA_RECORD_FIELDS: tuple[str, ...] = (
    "asset_id", "symbol", "name", "source", "source_asset_id", "price_usd", "market_cap_usd",
    "volume_24h_usd", "rank", "observed_at", "quality",
)
_DATA_RECORD_COLUMNS: tuple[Any, ...] = tuple(
    getattr(CurrentQuote, name).cast(Text).label(name) if name in _DECIMAL_SORT_FIELDS
    else getattr(CurrentQuote, name)
    for name in DATA_RECORD_FIELDS
)
_DATA_SORT_POSITION = {name: DATA_RECORD_FIELDS.index(name) for name in DATA_SORT_FIELDS}

DATA_VERSION_SQL = "SELECT version FROM data_version WHERE id = 1"
_DATA_VERSION = table("data_version", table_column("id"), table_column("version"))
# The data version as a last column of a page's rows (an InitPlan, read once per statement):
# the page and the version its snapshot holds in one round trip.
VERSION_COLUMN = select(_DATA_VERSION.c.version).where(
    _DATA_VERSION.c.id == 1).scalar_subquery().label("data_version")


@dataclass(frozen=True)
class DataFilters:
    """Filters of the current-records listing (all optional, combined with AND)."""

    source: str | None = None
    symbols: tuple[str, ...] = ()
    assets: tuple[str, ...] = ()
    q: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    # "ok" (clean quotes only) or "flagged" (flagged only); None: both.
    quality: str | None = None


# Sorting by a money field puts clean quotes first, then flagged ones, each part in the sort
# order (docs/quality.md): a flagged quote never tops a price or market-cap ranking unmarked.
CLEAN_FIRST_FIELDS = _DECIMAL_SORT_FIELDS
_FLAGGED = CurrentQuote.quality.is_not(None)


def _sort_key_to_json(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _DECIMAL_SORT_FIELDS:
        return format(Decimal(value), "f")
    if name == "observed_at":
        return value.isoformat()
    return value


def _sort_key_from_json(name: str, value: Any) -> Any:
    if value is None:
        if name not in _NULLABLE_SORT_FIELDS:
            raise InvalidCursor(f"cursor has no value for sort field {name!r}")
        return None
    if name in _DECIMAL_SORT_FIELDS:
        try:
            return parse_decimal_key(value)
        except DecimalKeyError as exc:
            raise InvalidCursor(f"cursor value for {name!r} is {exc}") from None
    if name in _INT_SORT_FIELDS:
        return cursor_int({"v": value}, "v")
    if name == "observed_at":
        return cursor_datetime({"v": value}, "v")
    return cursor_str({"v": value}, "v")


def escape_like(value: str) -> str:
    """`value` with LIKE wildcards and the escape character escaped (escape char: backslash)."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _data_conditions(filters: DataFilters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.source:
        conditions.append(CurrentQuote.source == filters.source)
    symbols = sorted({s.strip().upper() for s in filters.symbols if s.strip()})
    if len(symbols) == 1:
        conditions.append(CurrentQuote.symbol == symbols[0])
    elif symbols:
        conditions.append(CurrentQuote.symbol.in_(symbols))
    elif filters.symbols:  # only blank symbols: nothing can match
        conditions.append(CurrentQuote.symbol.is_(None))
    if filters.assets:
        ids, slugs = split_asset_refs(filters.assets)
        matches: list[ColumnElement[bool]] = []
        if ids:
            matches.append(CurrentQuote.asset_id.in_(ids))
        if slugs:
            matches.append(CurrentQuote.asset_id.in_(
                select(Asset.id).where(func.lower(Asset.slug).in_(slugs))))
        # Only unusable references: nothing can match.
        conditions.append(or_(*matches) if matches else CurrentQuote.asset_id.is_(None))
    if filters.q:
        pattern = f"%{escape_like(filters.q.strip())}%"
        conditions.append(or_(CurrentQuote.name.ilike(pattern, escape="\\"),
                              CurrentQuote.symbol.ilike(pattern, escape="\\")))
    if filters.quality == "ok":
        conditions.append(CurrentQuote.quality.is_(None))
    elif filters.quality == "flagged":
        conditions.append(_FLAGGED)
    return conditions + time_bounds(CurrentQuote.observed_at, filters.since, filters.until)


def parse_sort(sort: str, allowed: Sequence[str]) -> tuple[str, bool]:
    """('-price_usd', allowed) -> ('price_usd', True); ValueError for a field not allowed."""
    name, descending = (sort[1:], True) if sort.startswith("-") else (sort, False)
    if name not in allowed:
        raise ValueError(f"cannot sort by {name!r}")
    return name, descending


def read_data_version(conn: Connection) -> int | None:
    """The version of current_quotes (migration 0004); None if its row is missing."""
    version = conn.exec_driver_sql(DATA_VERSION_SQL).scalar()
    return None if version is None else int(version)


def count_current_quotes(conn: Connection | Session, filters: DataFilters | None = None) -> int:
    """How many current records match `filters` (an exact count)."""
    query = select(func.count()).select_from(CurrentQuote).where(
        *_data_conditions(filters or DataFilters()))
    return int(conn.execute(query).scalar_one())


def current_quotes_query(filters: DataFilters, sort: str) -> Select[Any]:
    """The current records of `filters` in `sort` order (ties by asset_id, source), as tuples
    in DATA_RECORD_FIELDS order: the pages add their keyset bound, the export reads it whole."""
    return ordered_quotes(sort, _data_conditions(filters))


def ordered_quotes(sort: str, conditions: Sequence[ColumnElement[bool]]) -> Select[Any]:
    """The records matching `conditions` in `sort` order (ties by asset_id, source)."""
    name, descending = parse_sort(sort, DATA_SORT_FIELDS)
    column = _DATA_SORT_COLUMNS[name]
    ordered = column.desc() if descending else column.asc()
    clean_first = [_FLAGGED] if name in CLEAN_FIRST_FIELDS else []
    return (select(*_DATA_RECORD_COLUMNS).where(*conditions)
            .order_by(*clean_first, ordered.nulls_last(), CurrentQuote.asset_id,
                      CurrentQuote.source))


def rows_after(sort: str, payload: dict[str, Any], key: Any, asset_id: Any, source: Any
               ) -> ColumnElement[bool]:
    """The keyset bound of a page after the row a cursor (read_cursor's parts) was issued for.

    `key`, `asset_id` and `source` may be bound parameters (shared.queries.data_read).
    """
    name, descending = parse_sort(sort, DATA_SORT_FIELDS)
    after = keyset_after(_DATA_SORT_COLUMNS[name], key, descending,
                         name in _NULLABLE_SORT_FIELDS,
                         (CurrentQuote.asset_id, CurrentQuote.source), (asset_id, source))
    return _after_in_part(after, payload) if name in CLEAN_FIRST_FIELDS else after


def list_current_quotes(
    conn: Connection | Session,
    filters: DataFilters | None = None,
    *,
    sort: str = "asset_id",
    offset: int = 0,
    limit: int = 50,
    cursor: str | None = None,
    total: int | None = None,
    count: bool = True,
) -> Page:
    """One page of current records in `sort` order (ties by asset_id, source), keyset or offset.

    Rows are tuples in DATA_RECORD_FIELDS order (money as exact decimal strings). With
    `cursor` the page starts right after the row the cursor was issued for, so rows written
    between two calls neither repeat nor shift the pages (offset is then ignored). `total`,
    when the caller already knows it for these filters, saves the count; with `count` False
    and no `total`, nothing is counted and the page's total is None.
    """
    rows, next_cursor, _ = page_rows(conn, filters or DataFilters(), sort, offset, limit,
                                     cursor, with_version=False)
    if total is None and count:
        total = count_current_quotes(conn, filters)
    return Page(rows=rows, total=total, next_cursor=next_cursor)


def page_rows(
    conn: Connection | Session, filters: DataFilters, sort: str, offset: int, limit: int,
    cursor: str | None, with_version: bool,
) -> tuple[list[tuple[Any, ...]], str | None, int | None]:
    """A page's rows, its next cursor and (`with_version`) the version its statement read."""
    query = current_quotes_query(filters, sort)
    if cursor is not None:
        query = query.where(rows_after(sort, *read_cursor(cursor, sort)))
        offset = 0
    cursor_of = cursor_maker(sort)
    if not with_version:
        return (*trim_page([tuple(row) for row in conn.execute(
            query.offset(offset).limit(limit + 1))], limit, cursor_of), None)
    fetched = [tuple(row) for row in conn.execute(
        query.add_columns(VERSION_COLUMN).offset(offset).limit(limit + 1))]
    version = None if not fetched or fetched[0][-1] is None else int(fetched[0][-1])
    rows, next_cursor = trim_page([row[:-1] for row in fetched], limit, cursor_of)
    return rows, next_cursor, version


def read_cursor(cursor: str, sort: str) -> tuple[dict[str, Any], Any, int, str]:
    """A /data cursor's payload, sort key, asset id and source; InvalidCursor if not for `sort`."""
    name, _ = parse_sort(sort, DATA_SORT_FIELDS)
    payload = decode_cursor(cursor, "data")
    if payload.get("s") != sort:
        raise InvalidCursor(f"cursor was issued for sort={payload.get('s')!r}, not {sort!r}")
    if "k" not in payload:
        raise InvalidCursor("cursor has no sort key")
    key = _sort_key_from_json(name, payload["k"])
    if name in CLEAN_FIRST_FIELDS:
        _check_part(payload)
    return payload, key, cursor_int(payload, "a"), cursor_str(payload, "r", 32)


def cursor_maker(sort: str) -> Callable[[tuple[Any, ...]], dict[str, Any]]:
    """The payload of the cursor issued for a row (DATA_RECORD_FIELDS order) in `sort` order."""
    name, descending = parse_sort(sort, DATA_SORT_FIELDS)
    clean_first = name in CLEAN_FIRST_FIELDS
    position = _DATA_SORT_POSITION[name]
    quality_at = DATA_RECORD_FIELDS.index("quality")

    def cursor_of(row: tuple[Any, ...]) -> dict[str, Any]:
        # Decimal keys are already plain-notation strings (see _DATA_RECORD_COLUMNS).
        key_json = (decimal_key(row[position], descending) if name in _DECIMAL_SORT_FIELDS
                    and row[position] is not None
                    else _sort_key_to_json(name, row[position]))
        payload = {"t": "data", "s": sort, "k": key_json, "a": row[0], "r": row[3]}
        if clean_first:
            payload["f"] = 1 if row[quality_at] is not None else 0
        return payload

    return cursor_of


def _after_in_part(after: ColumnElement[bool], payload: dict[str, Any]) -> ColumnElement[bool]:
    """Rows after the cursor's row when clean quotes come before flagged ones."""
    if _check_part(payload):
        return and_(_FLAGGED, after)
    return or_(_FLAGGED, and_(CurrentQuote.quality.is_(None), after))


def _check_part(payload: dict[str, Any]) -> int:
    """A cursor's quality part (1: its row was flagged); InvalidCursor unless 0 or 1."""
    flagged = payload.get("f")
    if flagged not in (0, 1) or isinstance(flagged, bool):
        raise InvalidCursor("cursor has no valid quality part")
    return int(flagged)
