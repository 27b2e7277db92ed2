"""An asset's prices per source over a range, thinned for a chart, with flags and consensus."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.config import SOURCES

# The ranges the page offers; None: since the asset's first quote.
RANGES: dict[str, timedelta | None] = {
    "24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30),
    "1y": timedelta(days=366), "all": None,
}
DEFAULT_RANGE = "all"
# A 640 px chart cannot show more; the consensus is taken over as many time buckets.
MAX_POINTS = 300
CONSENSUS_BUCKETS = 120

# Each source's last priced quote in each of `buckets` equal time buckets of the range, found
# by one backward probe of the quotes' key (asset_id, source, observed_at) per bucket, so the
# range "all" costs sources x buckets probes however much history is kept, where reading every
# quote of the range grew with it. Bucket i is [lo + i x width, lo + (i + 1) x width), its edges
# computed alike on both sides (each quote is in one bucket); the partition bounds of each
# probe are known only as it runs (run-time pruning keeps it to the bucket's partitions).
_PRICES_SQL = text("""
SELECT s.source, q.observed_at, q.price_usd, q.flag_set IS NOT NULL AS flagged
FROM unnest(CAST(:sources AS text[])) s(source)
CROSS JOIN generate_series(0, :buckets - 1) b(i)
CROSS JOIN LATERAL (
    SELECT observed_at, price_usd, flag_set FROM quotes
    WHERE asset_id = :asset AND source = s.source AND price_usd IS NOT NULL
      AND observed_at >= to_timestamp(:lo + b.i * :width)
      AND observed_at < to_timestamp(:lo + (b.i + 1) * :width)
      AND observed_at >= :since AND observed_at <= :until
    ORDER BY observed_at DESC LIMIT 1
) q
""")

# The asset's first priced quote: one forward probe of the key per source.
_FIRST_SQL = text("""
SELECT min(q.observed_at) FROM unnest(CAST(:sources AS text[])) s(source)
CROSS JOIN LATERAL (
    SELECT observed_at FROM quotes
    WHERE asset_id = :asset AND source = s.source AND price_usd IS NOT NULL
    ORDER BY observed_at LIMIT 1
) q
""")

# Quotes with flag documents (outliers, flags the stored form cannot rebuild): few, read from
# quote_flags. Flags kept in a quote's own row (flag_set) are marked where that quote is drawn.
_FLAG_DOCS_SQL = text("""
SELECT f.source, f.observed_at, q.price_usd FROM quote_flags f
JOIN quotes q ON q.asset_id = f.asset_id AND q.source = f.source
    AND q.observed_at = f.observed_at
WHERE f.asset_id = :asset AND q.price_usd IS NOT NULL
  AND f.observed_at >= :since AND f.observed_at <= :until
ORDER BY f.observed_at LIMIT :limit
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
    names = list(SOURCES if sources is None else sources)
    if since is None:
        first = session.execute(_FIRST_SQL, {"asset": asset_id, "sources": names}).scalar()
        since = first if first is not None and first < until else until - timedelta(days=1)
    chart = PriceChart(since, until)
    lo, hi = since.timestamp(), until.timestamp()
    if hi <= lo:
        return chart
    params = {"asset": asset_id, "since": since, "until": until}
    flagged: set[tuple[str, float, float]] = set()
    for source, at, price, marked in session.execute(_PRICES_SQL, {
            **params, "sources": names, "lo": lo, "width": (hi + 1 - lo) / MAX_POINTS,
            "buckets": MAX_POINTS}).all():
        point = (at.timestamp(), float(price))
        chart.points.setdefault(source, []).append(point)
        if marked:
            flagged.add((source, *point))
    for series in chart.points.values():
        series.sort()
    for source, at, price in session.execute(_FLAG_DOCS_SQL, {**params, "limit": MAX_POINTS}):
        if source in chart.points:
            flagged.add((source, at.timestamp(), float(price)))
    for source, x, y in sorted(flagged, key=lambda f: f[1])[:MAX_POINTS]:
        chart.flagged.setdefault(source, []).append((x, y))
    chart.consensus = consensus_line(chart.points, lo, hi)
    return chart
