"""An asset's prices per source over a range, thinned for a chart, with flags and consensus."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

# The ranges the page offers; None: since the asset's first quote.
RANGES: dict[str, timedelta | None] = {
    "24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30),
    "1y": timedelta(days=366), "all": None,
}
DEFAULT_RANGE = "all"
# A 640 px chart cannot show more; the consensus is taken over as many time buckets.
MAX_POINTS = 300
CONSENSUS_BUCKETS = 120

# Every priced quote of the asset in the range, one bucket row per source and time bucket
# (the bucket's last quote), so a year of minute data is still MAX_POINTS rows per source.
_PRICES_SQL = text("""
SELECT DISTINCT ON (source, bucket) source, observed_at, price_usd FROM (
    SELECT source, observed_at, price_usd,
           width_bucket(extract(epoch FROM observed_at), :lo, :hi, :buckets) AS bucket
    FROM quotes
    WHERE asset_id = :asset AND price_usd IS NOT NULL
      AND observed_at >= :since AND observed_at <= :until
) q ORDER BY source, bucket, observed_at DESC
""")

_SPAN_SQL = text("""
SELECT min(observed_at), max(observed_at) FROM quotes
WHERE asset_id = :asset AND price_usd IS NOT NULL
""")

# Flagged quotes: flags stored in the quote's row (flag_set) or as flag documents.
_FLAGS_SQL = text("""
SELECT source, observed_at, price_usd FROM (
    SELECT q.source, q.observed_at, q.price_usd FROM quotes q
    WHERE q.asset_id = :asset AND q.flag_set IS NOT NULL AND q.price_usd IS NOT NULL
      AND q.observed_at >= :since AND q.observed_at <= :until
    UNION
    SELECT f.source, f.observed_at, q.price_usd FROM quote_flags f
    JOIN quotes q ON q.asset_id = f.asset_id AND q.source = f.source
        AND q.observed_at = f.observed_at
    WHERE f.asset_id = :asset AND q.price_usd IS NOT NULL
      AND f.observed_at >= :since AND f.observed_at <= :until
) flagged ORDER BY observed_at LIMIT :limit
""")


@dataclass
class PriceChart:
    """Per source (x = unix seconds, y = USD) points, flagged points, and the consensus."""

    since: datetime | None
    until: datetime | None
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    flagged: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    consensus: list[tuple[float, float]] = field(default_factory=list)

    @property
    def total_points(self) -> int:
        """Points drawn over all sources."""
        return sum(len(p) for p in self.points.values())


def consensus_line(points: dict[str, list[tuple[float, float]]], lo: float, hi: float,
                   buckets: int = CONSENSUS_BUCKETS) -> list[tuple[float, float]]:
    """The median across sources of each source's last price per time bucket (>= 2 sources)."""
    if hi <= lo:
        return []
    width = (hi - lo) / buckets
    last: dict[int, dict[str, float]] = {}
    for source, series in points.items():
        for x, y in series:
            index = min(int((x - lo) / width), buckets - 1)
            last.setdefault(index, {})[source] = y  # points are oldest first
    return [(lo + (index + 0.5) * width, statistics.median(prices.values()))
            for index, prices in sorted(last.items()) if len(prices) >= 2]


def price_chart(session: Session, asset_id: int, since: datetime | None,
                until: datetime, sources: Sequence[str] | None = None) -> PriceChart:
    """The asset's prices between `since` (None: its first quote) and `until`."""
    if since is None:
        first, _ = session.execute(_SPAN_SQL, {"asset": asset_id}).one()
        since = first if first is not None and first < until else until - timedelta(days=1)
    chart = PriceChart(since, until)
    lo, hi = since.timestamp(), until.timestamp()
    if hi <= lo:
        return chart
    params = {"asset": asset_id, "since": since, "until": until}
    for source, at, price in session.execute(
            _PRICES_SQL, {**params, "lo": lo, "hi": hi + 1, "buckets": MAX_POINTS}).all():
        if sources is None or source in sources:
            chart.points.setdefault(source, []).append((at.timestamp(), float(price)))
    for series in chart.points.values():
        series.sort()
    for source, at, price in session.execute(_FLAGS_SQL, {**params, "limit": MAX_POINTS}).all():
        if source in chart.points:
            chart.flagged.setdefault(source, []).append((at.timestamp(), float(price)))
    chart.consensus = consensus_line(chart.points, lo, hi)
    return chart
