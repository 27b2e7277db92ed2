"""GET /data's read: one page, its data version and an optional total, from one snapshot.

Without a count the page is one statement, sent as SQL text kept per filter shape: which
filters are set, the sort and the cursor's form. SQLAlchemy builds and compiles each shape's
statement once per process (with bound parameters for every value: `= ANY(array)` for
lists); a request computes its shape and parameters and sends the text. Building, keying
and compiling the statement per request took over half the CPU of reading a page of 100
(measured in process: ~1.7 ms a page with it, ~0.8 ms without).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Hashable, Protocol

from sqlalchemy import (
    BigInteger, ColumnElement, Engine, String, any_, bindparam, func, or_, select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from shared.models import Asset, CurrentQuote
from shared.queries.assets import split_asset_refs
from shared.queries.data import (
    CLEAN_FIRST_FIELDS,
    DATA_SORT_FIELDS,
    VERSION_COLUMN,
    DataFilters,
    page_rows,
    count_current_quotes,
    cursor_maker,
    escape_like,
    ordered_quotes,
    parse_sort,
    read_cursor,
    read_data_version,
    rows_after,
)
from shared.queries.paging import Page, trim_page

# Statement texts kept per process: a shape is a combination of set filters, sort and cursor.
SHAPES_KEPT = 512


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
            rows, next_cursor, version = page_rows(
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
    shape, params = page_shape(filters, sort, offset, limit, cursor)
    text, fixed = page_text(shape, engine.dialect)
    params.update(fixed)
    for attempt in (1, 2):
        try:
            with engine.connect().execution_options(statement_timeout_inline=True) as conn:
                fetched = conn.exec_driver_sql(text, params).all()
            break
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    version = None if not fetched or fetched[0][-1] is None else int(fetched[0][-1])
    rows, next_cursor = trim_page([tuple(row)[:-1] for row in fetched], limit,
                                  cursor_maker(sort))
    return rows, next_cursor, version


def page_shape(filters: DataFilters, sort: str, offset: int, limit: int, cursor: str | None
               ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The shape of a page's statement (what page_text builds) and its parameters.

    The same conditions as shared.queries.data's (tests compare the pages of both).
    """
    name, descending = parse_sort(sort, DATA_SORT_FIELDS)
    params: dict[str, Any] = {"limit": limit + 1, "offset": offset}
    if filters.source:
        params["source"] = filters.source
    symbols = sorted({s.strip().upper() for s in filters.symbols if s.strip()})
    if len(symbols) == 1:
        params["symbol"] = symbols[0]
    elif symbols:
        params["symbols"] = symbols
    # 1: one symbol, 2: several, 3: only blank ones (nothing matches), 0: no symbol filter.
    symbol_form = 1 if len(symbols) == 1 else 2 if symbols else 3 if filters.symbols else 0
    asset_form = None
    if filters.assets:
        ids, slugs = split_asset_refs(filters.assets)
        params.update({"ids": ids} if ids else {}, **({"slugs": slugs} if slugs else {}))
        asset_form = (bool(ids), bool(slugs))
    if filters.q:
        params["pattern"] = f"%{escape_like(filters.q.strip())}%"
    for bound in ("since", "until"):
        if getattr(filters, bound):
            params[bound] = getattr(filters, bound)
    cursor_form = None
    if cursor is not None:
        payload, key, asset_id, source = read_cursor(cursor, sort)
        part = payload["f"] if name in CLEAN_FIRST_FIELDS else None  # checked: 0 or 1
        # keyset_after's own special case: by asset_id, the key is the id (one comparison).
        same = name == "asset_id" and not descending and key == asset_id
        cursor_form = ("same" if same else "null" if key is None else "key", part)
        params.update(after_asset=asset_id, after_source=source, offset=0)
        if cursor_form[0] == "key":
            params["after_key"] = key
    quality = filters.quality if filters.quality in ("ok", "flagged") else None
    shape = (sort, bool(filters.source), symbol_form, asset_form, bool(filters.q), quality,
             bool(filters.since), bool(filters.until), cursor_form)
    return shape, params


@functools.lru_cache(maxsize=SHAPES_KEPT)
def page_text(shape: tuple[Any, ...], dialect: Dialect) -> tuple[str, dict[str, Any]]:
    """The SQL text of a page's statement of `shape` (rows, then the data version), and the
    values of the parameters SQLAlchemy bound itself."""
    sort, source, symbol_form, asset_form, q, quality, since, until, cursor_form = shape
    conditions: list[ColumnElement[bool]] = []
    if source:
        conditions.append(CurrentQuote.source == bindparam("source"))
    if symbol_form == 1:
        conditions.append(CurrentQuote.symbol == bindparam("symbol"))
    elif symbol_form == 2:
        symbols = bindparam("symbols", type_=ARRAY(String))
        conditions.append(CurrentQuote.symbol == any_(symbols))
    elif symbol_form == 3:
        conditions.append(CurrentQuote.symbol.is_(None))
    if asset_form is not None:
        ids, slugs = asset_form
        matches: list[ColumnElement[bool]] = []
        if ids:
            matches.append(CurrentQuote.asset_id == any_(bindparam("ids",
                                                                   type_=ARRAY(BigInteger))))
        if slugs:
            matches.append(CurrentQuote.asset_id.in_(select(Asset.id).where(
                func.lower(Asset.slug) == any_(bindparam("slugs", type_=ARRAY(String))))))
        conditions.append(or_(*matches) if matches else CurrentQuote.asset_id.is_(None))
    if q:
        pattern = bindparam("pattern", type_=String())
        conditions.append(or_(CurrentQuote.name.ilike(pattern, escape="\\"),
                              CurrentQuote.symbol.ilike(pattern, escape="\\")))
    if quality == "ok":
        conditions.append(CurrentQuote.quality.is_(None))
    elif quality == "flagged":
        conditions.append(CurrentQuote.quality.is_not(None))
    observed = CurrentQuote.observed_at
    if since:
        conditions.append(observed >= bindparam("since", type_=observed.type))
    if until:
        conditions.append(observed <= bindparam("until", type_=observed.type))
    query = ordered_quotes(sort, conditions)
    if cursor_form is not None:
        form, part = cursor_form
        asset_id = bindparam("after_asset", type_=BigInteger())
        key: Any = None if form == "null" else asset_id if form == "same" else bindparam(
            "after_key", type_=CurrentQuote.__table__.c[parse_sort(sort, DATA_SORT_FIELDS)[0]]
            .type)
        query = query.where(rows_after(sort, {"f": part}, key, asset_id,
                                       bindparam("after_source", type_=String())))
    query = query.add_columns(VERSION_COLUMN).limit(bindparam("limit")).offset(
        bindparam("offset"))
    compiled = query.compile(dialect=dialect)
    own = {"limit", "offset", "source", "symbol", "symbols", "ids", "slugs", "pattern", "since",
           "until", "after_asset", "after_key", "after_source"}
    return compiled.string, {k: v for k, v in compiled.params.items() if k not in own}
