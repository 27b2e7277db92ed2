"""GET /data: filters, sort keys and keyset pages of current records, read in one snapshot."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Hashable, Protocol, Sequence

from sqlalchemy import (
    ColumnElement, Connection, Engine, Select, Text, and_, func, or_, select, table,
)
from sqlalchemy import column as table_column
from sqlalchemy.exc import DBAPIError
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
_VERSION_COLUMN = select(_DATA_VERSION.c.version).where(
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
_CLEAN_FIRST_FIELDS = _DECIMAL_SORT_FIELDS
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
    name, descending = parse_sort(sort, DATA_SORT_FIELDS)
    column = _DATA_SORT_COLUMNS[name]
    ordered = column.desc() if descending else column.asc()
    clean_first = [_FLAGGED] if name in _CLEAN_FIRST_FIELDS else []
    return (select(*_DATA_RECORD_COLUMNS).where(*_data_conditions(filters))
            .order_by(*clean_first, ordered.nulls_last(), CurrentQuote.asset_id,
                      CurrentQuote.source))


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
    rows, next_cursor, _ = _page_rows(conn, filters or DataFilters(), sort, offset, limit,
                                      cursor, with_version=False)
    if total is None and count:
        total = count_current_quotes(conn, filters)
    return Page(rows=rows, total=total, next_cursor=next_cursor)


def _page_rows(
    conn: Connection | Session, filters: DataFilters, sort: str, offset: int, limit: int,
    cursor: str | None, with_version: bool,
) -> tuple[list[tuple[Any, ...]], str | None, int | None]:
    """A page's rows, its next cursor and (`with_version`) the version its statement read."""
    name, descending = parse_sort(sort, DATA_SORT_FIELDS)
    column = _DATA_SORT_COLUMNS[name]
    clean_first = name in _CLEAN_FIRST_FIELDS
    nullable = name in _NULLABLE_SORT_FIELDS
    query = current_quotes_query(filters, sort)
    if cursor is not None:
        payload = decode_cursor(cursor, "data")
        if payload.get("s") != sort:
            raise InvalidCursor(f"cursor was issued for sort={payload.get('s')!r}, not {sort!r}")
        if "k" not in payload:
            raise InvalidCursor("cursor has no sort key")
        key = _sort_key_from_json(name, payload["k"])
        asset_id, source = cursor_int(payload, "a"), cursor_str(payload, "r", 32)
        after = keyset_after(column, key, descending, nullable,
                             (CurrentQuote.asset_id, CurrentQuote.source), (asset_id, source))
        if clean_first:
            after = _after_in_part(after, payload)
        query = query.where(after)
        offset = 0
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

    if not with_version:
        return (*trim_page([tuple(row) for row in conn.execute(
            query.offset(offset).limit(limit + 1))], limit, cursor_of), None)
    fetched = [tuple(row) for row in conn.execute(
        query.add_columns(_VERSION_COLUMN).offset(offset).limit(limit + 1))]
    version = None if not fetched or fetched[0][-1] is None else int(fetched[0][-1])
    rows, next_cursor = trim_page([row[:-1] for row in fetched], limit, cursor_of)
    return rows, next_cursor, version


def _after_in_part(after: ColumnElement[bool], payload: dict[str, Any]) -> ColumnElement[bool]:
    """Rows after the cursor's row when clean quotes come before flagged ones."""
    flagged = payload.get("f")
    if flagged not in (0, 1) or isinstance(flagged, bool):
        raise InvalidCursor("cursor has no valid quality part")
    if flagged:
        return and_(_FLAGGED, after)
    return or_(_FLAGGED, and_(CurrentQuote.quality.is_(None), after))


class TotalsCache(Protocol):
    """Where totals are kept per data version (the API's api.http.answer_cache.VersionedCache)."""

    def get(self, version: int | None, key: Hashable) -> Any:
        """The value stored for `key` at exactly this version, or None."""

    def put(self, version: int, key: Hashable, value: Any, size: int) -> None:
        """Keep `value` (about `size` bytes) for `key` at `version`."""


@dataclass(frozen=True)
class DataSnapshot:
    """A /data page read in one snapshot, with the data version that snapshot holds."""

    version: int | None
    page: Page


def read_current_quotes(
    engine: Engine,
    filters: DataFilters,
    totals: TotalsCache | None = None,
    count: bool = True,
    autocommit: Engine | None = None,
    **window: Any,
) -> DataSnapshot:
    """The data version, one page and (with `count`) its total, from one snapshot.

    Without a count, the page and its version are one statement: on `autocommit` (an engine
    whose connections are in autocommit, when given) that statement is the whole read, with
    no BEGIN or COMMIT around it. An empty page (no row to carry the version) and a count are
    read in a REPEATABLE READ transaction on `engine` instead.

    An exact count reads every matching record, which costs far more than a page when many
    match and nothing is cached (a new filter per request): GET /data counts only when the
    client asks. The total of each filter set is kept in `totals` per data version, so a count
    runs once per (filters, version) and process instead of on every request.
    """
    sort, offset, limit = window.get("sort", "asset_id"), window.get("offset", 0), \
        window.get("limit", 50)
    if autocommit is not None and not count:
        rows, next_cursor, version = _page_alone(autocommit, filters, sort, offset, limit,
                                                 window.get("cursor"))
        if rows:
            return DataSnapshot(version, Page(rows=rows, total=None, next_cursor=next_cursor))
    # statement_timeout_inline: the API's SET LOCAL statement_timeout goes in front of the
    # page's statement, the first of the transaction (api.http.read_timeout.INLINE_OPTION).
    with engine.connect().execution_options(isolation_level="REPEATABLE READ",
                                            statement_timeout_inline=True) as conn:
        with conn.begin():
            # The version comes with the page's rows: a round trip less per request (each one
            # waits its turn for a core under load; docs/benchmarks.md). An empty page has no
            # row to carry it: read it on its own then.
            rows, next_cursor, version = _page_rows(
                conn, filters, sort, offset, limit, window.get("cursor"), with_version=True)
            if not rows:
                version = read_data_version(conn)
            total = None
            if count and totals is not None and version is not None:
                total = totals.get(version, ("total", filters))
            if count and total is None:
                total = count_current_quotes(conn, filters)
                if totals is not None and version is not None:
                    totals.put(version, ("total", filters), total, 200)
    return DataSnapshot(version, Page(rows=rows, total=total, next_cursor=next_cursor))


def _page_alone(
    engine: Engine, filters: DataFilters, sort: str, offset: int, limit: int,
    cursor: str | None,
) -> tuple[list[tuple[Any, ...]], str | None, int | None]:
    """A page and its version in one statement on an autocommit connection.

    That engine's pool does not ping at checkout (api.pool_check.statement_engine): a pooled
    connection the server ended since its last use fails the statement, SQLAlchemy marks it
    `connection_invalidated` (and the pool retires the connections as old as it), and the read
    runs again once on a new connection. A read is safe to repeat; any other error is raised.
    """
    for attempt in (1, 2):
        try:
            with engine.connect().execution_options(statement_timeout_inline=True) as conn:
                return _page_rows(conn, filters, sort, offset, limit, cursor,
                                  with_version=True)
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
