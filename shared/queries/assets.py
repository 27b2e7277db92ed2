"""GET /data/<asset> and its history: asset references, cross-source consensus, quote pages."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Mapping, Sequence

from sqlalchemy import ColumnElement, Select, func, select, text, tuple_, union_all
from sqlalchemy.orm import Session, aliased

from shared.config import SOURCES
from shared.errors import NotFound
from shared.quality.consensus import window_consensus
from shared.models import Asset, AssetSourceId, CurrentQuote, Quote, QuoteFlag
from shared.quality.checks import quality_of
from shared.quality.compact import flag_sets, stored_flags
from shared.queries.paging import (
    BIGINT_MAX,
    InvalidCursor,
    Page,
    cursor_datetime,
    cursor_int,
    cursor_str,
    count_rows,
    decode_cursor,
    time_bounds,
    trim_page,
)
from shared.queries import rollup_history
from shared.storage.rollups import horizons

# The longest range of quotes one history, candle or export request may ask for.
HISTORY_MAX_RANGE = timedelta(days=366)


@dataclass(frozen=True)
class Consensus:
    """Cross-source agreement on an asset's price."""

    price_usd: Decimal | None
    min_price_usd: Decimal | None
    max_price_usd: Decimal | None
    spread: float | None
    disagree: bool
    threshold: float
    sources: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AssetDetail:
    """An asset, its ids at each source, its current quote per source and the consensus."""

    asset: Asset
    source_ids: Sequence[AssetSourceId]
    quotes: Sequence[CurrentQuote]
    # shared.quality.consensus.WindowConsensus.as_dict(): in-window clean quotes only.
    consensus: dict[str, Any]


def split_asset_refs(refs: Sequence[str]) -> tuple[list[int], list[str]]:
    """Asset references as (ids that fit a BIGINT, lower-cased slugs); unusable ones dropped."""
    ids: list[int] = []
    slugs: list[str] = []
    for ref in refs:
        ref = ref.strip()
        if ref.isdigit() and ref.isascii():
            number = int(ref)
            if number <= BIGINT_MAX:
                ids.append(number)
        elif ref and "\x00" not in ref:
            slugs.append(ref.lower())
    return ids, slugs


def resolve_asset(session: Session, ref: str) -> Asset:
    """The asset named by its id or its slug; NotFound otherwise."""
    ids, slugs = split_asset_refs([ref])
    asset: Asset | None = None
    if ids:
        asset = session.get(Asset, ids[0])
    elif slugs and len(slugs[0]) <= 200:
        asset = session.scalar(select(Asset).where(Asset.slug == ref.strip()))
        if asset is None:
            asset = session.scalar(
                select(Asset).where(func.lower(Asset.slug) == slugs[0]).order_by(Asset.id)
                .limit(1))
    if asset is None:
        raise NotFound(f"asset {ref[:100]!r} not found")
    return asset


def price_consensus(quotes: Sequence[CurrentQuote], threshold: float) -> Consensus:
    """Median price across sources and the relative spread (max - min) / median."""
    priced = [(q.source, Decimal(q.price_usd)) for q in quotes if q.price_usd is not None]
    if not priced:
        return Consensus(None, None, None, None, False, threshold, [])
    prices = [p for _, p in priced]
    median = statistics.median(prices)
    low, high = min(prices), max(prices)
    spread = float((high - low) / median) if median > 0 else None
    disagree = spread is not None and spread > threshold
    return Consensus(median, low, high, spread, disagree, threshold,
                     sorted({s for s, _ in priced}))


def asset_detail(session: Session, ref: str, disagreement_share: float,
                 window_seconds: int) -> AssetDetail:
    """Everything known now about one asset, across sources, with the windowed consensus."""
    asset = resolve_asset(session, ref)
    source_ids = session.scalars(
        select(AssetSourceId).where(AssetSourceId.asset_id == asset.id)
        .order_by(AssetSourceId.source, AssetSourceId.source_asset_id)
    ).all()
    quotes = session.scalars(
        select(CurrentQuote).where(CurrentQuote.asset_id == asset.id)
        .order_by(CurrentQuote.source)
    ).all()
    consensus = window_consensus(quotes, window_seconds, disagreement_share)
    return AssetDetail(asset, source_ids, quotes, consensus.as_dict())


def asset_history(
    session: Session,
    ref: str,
    *,
    source: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    offset: int = 0,
    limit: int = 50,
    cursor: str | None = None,
    count: bool = False,
) -> Page:
    """One page of an asset's quotes, newest first (ties by source, descending).

    With neither since nor until, the whole series; RangeTooLong when an open since (the
    first quote) is further than HISTORY_MAX_RANGE from `until`. `total` only with `count`.
    """
    asset = resolve_asset(session, ref)
    # Read once per request: the page, its cap check and its rollup rows share them.
    marks = horizons(session.connection())
    if until is not None:  # the cap with an open since
        range_start(session, asset.id, source, since, until, marks=marks)
    conditions: list[ColumnElement[bool]] = [Quote.asset_id == asset.id]
    if source:
        conditions.append(Quote.source == source)
    conditions += time_bounds(Quote.observed_at, since, until)
    # Past retention's horizon the rollups answer (shared.queries.rollup_history); a row
    # written there later is not read until it is folded.
    horizon = marks.get("quotes")
    if horizon is not None:
        conditions.append(Quote.observed_at >= horizon)
    base = select(Quote).where(*conditions)
    after: tuple[datetime, str] | None = None
    if cursor is not None:
        payload = decode_cursor(cursor, "history")
        if cursor_int(payload, "a") != asset.id:
            raise InvalidCursor("cursor was issued for another asset")
        after = cursor_datetime(payload, "o"), cursor_str(payload, "r", 32)
        # The time bound is implied by the row comparison; it gives the index scans a range.
        conditions += [tuple_(Quote.observed_at, Quote.source) < tuple_(*after),
                       Quote.observed_at <= after[0]]
        offset = 0

    def cursor_of(row: Any) -> dict[str, Any]:
        return {"t": "history", "a": asset.id, "o": row.observed_at.isoformat(), "r": row.source}

    # No count unless asked (as GET /data's `total=true`): it would read every row of the
    # range, full and rolled up, which grow every day; a page reads only what it shows.
    query = _newest_first(conditions, source, offset + limit + 1)
    full, next_cursor = trim_page(list(session.scalars(query.offset(offset).limit(limit + 1))),
                                  limit, cursor_of)
    full_total = count_rows(session, base) if count else None
    _attach_quality(session, asset.id, full)
    for quote in full:
        setattr(quote, "resolution", "full")  # read by the history schema, as quality
    if horizon is None or (since is not None and since >= horizon):
        return Page(full, full_total, next_cursor)
    conn = session.connection()
    total = None if full_total is None else full_total + rollup_history.count(
        conn, asset.id, source, since, until, marks=marks)
    if next_cursor is not None:  # the page is all full rows
        return Page(full, total, next_cursor)
    older = rollup_history.rows(
        conn, asset.id, source, since, until, after=after, marks=marks,
        offset=0 if after else max(0, offset - _full_before(session, base, offset, full,
                                                            full_total)),
        limit=limit + 1 - len(full))
    rows, next_cursor = trim_page([*full, *older], limit, cursor_of)
    return Page(rows, total, next_cursor)


def _newest_first(conditions: Sequence[ColumnElement[bool]], source: str | None,
                  reach: int) -> Select[Any]:
    """Quotes meeting `conditions`, newest first (ties by source, descending).

    Without a source, one branch per source, each cut at `reach` rows: the primary key
    (asset_id, source, observed_at) gives each source's rows in time order, so each branch
    reads only the rows a page can show, where one query over all sources would sort every
    row of the asset's history first.
    """
    if source:
        return (select(Quote).where(*conditions)
                .order_by(Quote.observed_at.desc(), Quote.source.desc()))
    branches = [select(Quote).where(*conditions, Quote.source == name)
                .order_by(Quote.observed_at.desc()).limit(reach) for name in SOURCES]
    merged = union_all(*branches).subquery("merged")
    return (select(aliased(Quote, merged))
            .order_by(merged.c.observed_at.desc(), merged.c.source.desc()))


def _full_before(session: Session, base: Select[Any], offset: int, page: Sequence[Any],
                 counted: int | None) -> int:
    """How many full rows the range has, on a page that reached their end (`page` from
    `offset`): counted at most up to the offset, which the page's own read skipped anyway."""
    if counted is not None:
        return counted
    if page or not offset:
        return offset + len(page)
    probe = base.order_by(None).with_only_columns(Quote.observed_at).limit(offset).subquery()
    return int(session.scalar(select(func.count()).select_from(probe)) or 0)


def _attach_quality(session: Session, asset_id: int, quotes: Sequence[Quote]) -> None:
    """Set each quote's `quality` (its flags rebuilt from their stored form and its flag
    documents, or None when clean): at most two queries per page."""
    if not quotes:
        return
    keys = [(q.source, q.observed_at) for q in quotes]
    rows = session.execute(
        select(QuoteFlag.source, QuoteFlag.observed_at, QuoteFlag.flags)
        .where(QuoteFlag.asset_id == asset_id,
               tuple_(QuoteFlag.source, QuoteFlag.observed_at).in_(keys)))
    documents = {(source, at): flags for source, at, flags in rows}
    cursor = session.connection().connection.cursor()
    sets = flag_sets(cursor, (q.flag_set for q in quotes))
    for quote in quotes:
        flags = stored_flags(sets, vars(quote), documents.get((quote.source, quote.observed_at)))
        # A plain attribute beside the mapped columns, read by the history schema.
        setattr(quote, "quality", quality_of(flags))


def first_observed(session: Session, asset_id: int, source: str | None = None, *,
                   marks: Mapping[str, datetime] | None = None) -> datetime | None:
    """When the asset's first quote (at `source`, or at any source) was observed."""
    # One primary-key probe per source: min() over (asset_id, source, observed_at) with the
    # source fixed reads one index entry; across sources it would scan the asset's quotes.
    # Past retention the first may be in a rollup (shared.storage.rollups), probed likewise.
    names = (source,) if source else SOURCES
    if marks is None:
        marks = horizons(session.connection())
    full_from = marks.get("quotes")
    firsts = [
        session.scalar(select(func.min(Quote.observed_at))
                       .where(Quote.asset_id == asset_id, Quote.source == name,
                              *([Quote.observed_at >= full_from] if full_from else [])))
        for name in names
    ]
    if full_from is not None:
        firsts += [session.scalar(text(
            f"SELECT first_observed_at FROM {table} WHERE asset_id = :a AND source = :s "
            "ORDER BY bucket_start LIMIT 1"), {"a": asset_id, "s": name})
            for table in ("quotes_daily", "quotes_hourly") for name in names]
    known = [first for first in firsts if first is not None]
    return min(known) if known else None


class RangeTooLong(ValueError):
    """A history range longer than HISTORY_MAX_RANGE; `field` names the argument to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_history_range(since: datetime | None, until: datetime | None, now: datetime,
                        first: datetime | None = None) -> None:
    """RangeTooLong when since..until spans more than HISTORY_MAX_RANGE.

    An open until counts as `now`, an open since as `first` (the asset's first quote): with
    neither since nor `first` there is nothing to check.
    """
    days = HISTORY_MAX_RANGE.days
    if since is not None and until is not None:
        if until - since > HISTORY_MAX_RANGE:
            raise RangeTooLong("until", f"until - since must not exceed {days} days")
    elif since is not None:
        if now - since > HISTORY_MAX_RANGE:
            raise RangeTooLong("since", f"since must be at most {days} days ago when until is "
                                        "not given (an open until counts as now)")
    elif first is not None and (until or now) - first > HISTORY_MAX_RANGE:
        if until is not None:
            raise RangeTooLong("until", f"until must be at most {days} days after the asset's "
                                        "first quote when since is not given (an open since "
                                        "counts as the first quote)")
        raise RangeTooLong("since", f"the range must be at most {days} days: give since (an "
                                    "open since counts as the asset's first quote, an open "
                                    "until as now)")


def range_start(session: Session, asset_id: int, source: str | None, since: datetime | None,
                until: datetime | None, *, marks: Mapping[str, datetime] | None = None
                ) -> datetime | None:
    """`since`, or when open the asset's first quote at `source` (None: no quote yet).

    RangeTooLong when that first quote is further than HISTORY_MAX_RANGE from `until` (or
    now); a given since was checked with the arguments.
    """
    if since is not None:
        return since
    first = first_observed(session, asset_id, source, marks=marks)
    check_history_range(None, until, datetime.now(timezone.utc), first)
    return first
