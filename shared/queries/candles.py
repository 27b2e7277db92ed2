"""OHLCV candles of one asset at one source, bucketed from its quotes, gaps reported.

Convention: buckets start on multiples of the interval since 1970-01-01T00:00Z (so 1d is a UTC
day, 4h starts at 00, 04, ... UTC); a bucket holds quotes with start <= observed_at < end.
open = the first quote's price (its own open when the row carries OHLC), close = the last
quote's price (its own close), high/low = max/min of the prices (of the rows' own high/low
where they carry them), volume = the 24h volume of the bucket's last quote: sources give a
rolling 24h volume, so summing a bucket's quotes would count the same trades many times.
Money is the stored NUMERIC's text, never a float. Empty buckets are not filled: they are
listed as gaps.

Across retention (shared.storage.rollups): buckets from the quotes' horizon on are computed
from the full rows, older ones from the hourly rollups, and before the hourly horizon from the
daily ones (1d candles only: a daily row cannot answer a 1h or 4h bucket, which is a gap
there, its `reason` saying so). Horizons fall on UTC midnights, so no bucket is split between
two resolutions; each candle names the one that answered (`resolution`: full, hourly, daily).
A rollup answers whole buckets: since and until select the rollup rows that overlap them.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Mapping

from sqlalchemy import Connection, TextClause, text
from sqlalchemy.orm import Session

from shared.queries.assets import range_start, resolve_asset
from shared.queries.paging import InvalidCursor, cursor_datetime, cursor_int, cursor_str
from shared.queries.paging import decode_cursor, encode_cursor
from shared.storage.rollups import ROLLUP_AGGREGATES, horizons

INTERVALS: dict[str, timedelta] = {
    "1h": timedelta(hours=1), "4h": timedelta(hours=4), "1d": timedelta(days=1)}
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
CANDLE_FIELDS = ("bucket_start", "bucket_end", "open", "high", "low", "close", "volume",
                 "quotes", "first_observed_at", "last_observed_at", "resolution")

# One statement per page: the WHERE is a range of the quotes primary key
# (asset_id, source, observed_at), so the rows read are the page's, whatever the table's size.
_CANDLES_SQL = text("""
SELECT date_bin(CAST(:step AS interval), observed_at, TIMESTAMPTZ '1970-01-01 00:00:00+00')
         AS bucket,
       CAST((array_agg(coalesce(open_usd, price_usd) ORDER BY observed_at)
             FILTER (WHERE coalesce(open_usd, price_usd) IS NOT NULL))[1] AS text) AS open,
       CAST(max(coalesce(high_usd, price_usd)) AS text) AS high,
       CAST(min(coalesce(low_usd, price_usd)) AS text) AS low,
       CAST((array_agg(coalesce(close_usd, price_usd) ORDER BY observed_at DESC)
             FILTER (WHERE coalesce(close_usd, price_usd) IS NOT NULL))[1] AS text) AS close,
       CAST((array_agg(volume_24h_usd ORDER BY observed_at DESC))[1] AS text) AS volume,
       count(*) AS quotes,
       min(observed_at) AS first_observed_at,
       max(observed_at) AS last_observed_at
FROM quotes
WHERE asset_id = :asset_id AND source = :source
  AND observed_at >= :low AND observed_at < :high
  AND observed_at >= :since AND observed_at <= :until
GROUP BY bucket
ORDER BY bucket
""")


# The same buckets from a rollup table: the fold's aggregates over its rows
# (shared.storage.rollups), so a candle equals the one the full rows gave.
_ROLLUP_CANDLES = f"""
SELECT date_bin(CAST(:step AS interval), bucket_start, TIMESTAMPTZ '1970-01-01 00:00:00+00')
         AS bucket, {ROLLUP_AGGREGATES}
FROM {{table}}
WHERE asset_id = :asset_id AND source = :source
  AND bucket_start >= :low AND bucket_start < :high
  AND last_observed_at >= :since AND first_observed_at <= :until
GROUP BY bucket
ORDER BY bucket
"""


def _rollup_candles(table: str) -> TextClause:
    """_ROLLUP_CANDLES over `table`, money as text like the full rows' candles."""
    return text(f"""
SELECT bucket, CAST(open_usd AS text) AS open, CAST(high_usd AS text) AS high,
       CAST(low_usd AS text) AS low, CAST(close_usd AS text) AS close,
       CAST(volume_24h_usd AS text) AS volume, quotes, first_observed_at, last_observed_at
FROM ({_ROLLUP_CANDLES.format(table=table)}) c
""")


_ROLLUP_SQL = {"hourly": _rollup_candles("quotes_hourly"),
               "daily": _rollup_candles("quotes_daily")}
_MIN = datetime.min.replace(tzinfo=timezone.utc)
# Why a run of buckets is empty: no quote was stored for them, or retention keeps only daily
# rollups there, which cannot answer a bucket under a day.
GAP_NO_QUOTES = "no_quotes"
GAP_ROLLED_UP = "daily_rollups_only"


def resolution_ranges(marks: Mapping[str, datetime], low: datetime, high: datetime,
                      step: timedelta) -> list[tuple[str, datetime, datetime]]:
    """[low, high) cut where each resolution answers, oldest first: (resolution, low, high);
    `marks`: retention's horizons (shared.storage.rollups.horizons).

    Daily rows answer only buckets of a day or more."""
    full_from = marks.get("quotes", _MIN)
    hourly_from = marks.get("quotes_hourly", _MIN)
    ranges = [("daily", low, min(high, hourly_from)) if step >= timedelta(days=1) else None,
              ("hourly", max(low, hourly_from), min(high, full_from)),
              ("full", max(low, full_from), high)]
    return [r for r in ranges if r is not None and r[1] < r[2]]


def floor_bucket(moment: datetime, step: timedelta) -> datetime:
    """The start of the bucket holding `moment`."""
    return EPOCH + ((moment - EPOCH) // step) * step


@dataclass(frozen=True)
class CandleRange:
    """The buckets a request covers: [first, first + count * step), within since..until."""

    asset_id: int
    source: str
    step: timedelta
    since: datetime
    until: datetime
    first: datetime
    count: int

    def window(self, start_index: int, size: int) -> tuple[datetime, datetime, int]:
        """Start, end and bucket count of buckets start_index .. start_index + size."""
        size = max(0, min(size, self.count - start_index))
        if size == 0:  # past the end: no time arithmetic (a deep page could overflow it)
            return self.first, self.first, 0
        low = self.first + start_index * self.step
        return low, low + size * self.step, size


@dataclass(frozen=True)
class CandlePage:
    """A page of candles (non-empty buckets), the empty buckets between them, paging."""

    candles: list[dict[str, Any]]
    gaps: list[dict[str, str]]
    total: int
    next_cursor: str | None
    interval: str


def candle_range(session: Session, ref: str, source: str, interval: str,
                 since: datetime | None, until: datetime | None) -> CandleRange | None:
    """The bucket range of a request; an open since is the first quote; None if no quote.

    RangeTooLong when the range, open ends included, is longer than HISTORY_MAX_RANGE.
    """
    asset = resolve_asset(session, ref)
    step = INTERVALS[interval]
    since = range_start(session, asset.id, source, since, until)
    if since is None:
        return None
    until = until or datetime.now(timezone.utc)
    first = floor_bucket(since, step)
    count = (floor_bucket(until, step) - first) // step + 1 if until >= since else 0
    return CandleRange(asset.id, source, step, since, until, first, count)


def candle_rows(conn: Connection, span: CandleRange, low: datetime, high: datetime,
                marks: Mapping[str, datetime] | None = None) -> Iterator[dict[str, Any]]:
    """The candles of buckets in [low, high), oldest first, as dicts of CANDLE_FIELDS: from
    the full rows, or the rollups where retention replaced them (`marks`: the horizons, when
    the caller has read them)."""
    marks = horizons(conn) if marks is None else marks
    for resolution, start, end in resolution_ranges(marks, low, high, span.step):
        rows = conn.execute(_ROLLUP_SQL.get(resolution, _CANDLES_SQL), {
            "step": f"{int(span.step.total_seconds())} seconds", "asset_id": span.asset_id,
            "source": span.source, "low": start, "high": end, "since": span.since,
            "until": span.until})
        for row in rows:
            bucket = row.bucket.astimezone(timezone.utc)
            yield {
                "bucket_start": bucket.isoformat(),
                "bucket_end": (bucket + span.step).isoformat(),
                "open": row.open, "high": row.high, "low": row.low, "close": row.close,
                "volume": row.volume, "quotes": int(row.quotes),
                "first_observed_at": row.first_observed_at.astimezone(timezone.utc).isoformat(),
                "last_observed_at": row.last_observed_at.astimezone(timezone.utc).isoformat(),
                "resolution": resolution,
            }


def gaps_of(candles: list[dict[str, Any]], low: datetime, high: datetime, step: timedelta,
            daily_before: datetime | None = None) -> list[dict[str, str]]:
    """Runs of empty buckets in [low, high) as {start, end, reason} (end exclusive).

    `daily_before`: where retention keeps only daily rollups (the hourly horizon, for an
    interval under a day); a run before it is cut there and says so (GAP_ROLLED_UP), the rest
    had no quote stored (GAP_NO_QUOTES)."""
    runs: list[tuple[datetime, datetime]] = []
    cursor = low
    for candle in candles:
        start = datetime.fromisoformat(candle["bucket_start"])
        if start > cursor:
            runs.append((cursor, start))
        cursor = start + step
    if cursor < high:
        runs.append((cursor, high))
    gaps: list[dict[str, str]] = []
    for start, end in runs:
        if daily_before is not None and start < daily_before:
            cut = min(end, daily_before)
            gaps.append({"start": start.isoformat(), "end": cut.isoformat(),
                         "reason": GAP_ROLLED_UP})
            start = cut
        if start < end:
            gaps.append({"start": start.isoformat(), "end": end.isoformat(),
                         "reason": GAP_NO_QUOTES})
    return gaps


def _start_index(span: CandleRange, offset: int, cursor: str | None) -> int:
    """The first bucket's index in the range: from the cursor, or the page offset."""
    if cursor is None:
        return offset
    payload = decode_cursor(cursor, "candles")
    if cursor_int(payload, "a") != span.asset_id or cursor_str(payload, "r", 32) != span.source:
        raise InvalidCursor("cursor was issued for another asset or source")
    start = cursor_datetime(payload, "b")
    index = (start - span.first) / span.step
    if index != int(index) or index < 0:
        raise InvalidCursor("cursor was issued for another range or interval")
    return int(index)


def candles_page(session: Session, ref: str, *, source: str, interval: str,
                 since: datetime | None = None, until: datetime | None = None,
                 offset: int = 0, limit: int = 50, cursor: str | None = None) -> CandlePage:
    """One page of `limit` buckets (oldest first): their candles and the gaps among them.

    Pages count buckets, empty ones included, so a page's time range is known before the
    query and `total` is the number of buckets in the range.
    """
    span = candle_range(session, ref, source, interval, since, until)
    if span is None:
        return CandlePage([], [], 0, None, interval)
    start_index = _start_index(span, offset, cursor)
    low, high, size = span.window(start_index, limit)
    if size <= 0:
        return CandlePage([], [], span.count, None, interval)
    marks = horizons(session.connection())  # read once: the candles' ranges and the gaps
    candles = list(candle_rows(session.connection(), span, low, high, marks))
    more = start_index + size < span.count
    next_cursor = encode_cursor({"t": "candles", "a": span.asset_id, "r": source,
                                 "b": high.isoformat()}) if more else None
    hourly_from = marks.get("quotes_hourly")
    daily_before = hourly_from if span.step < timedelta(days=1) else None
    return CandlePage(candles, gaps_of(candles, low, high, span.step, daily_before), span.count,
                      next_cursor, interval)
