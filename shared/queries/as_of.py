"""Point-in-time lookups: per source, an asset's latest quote at or before a moment, and its age.

Past retention (shared.storage.rollups) the quote comes from the rollup bucket holding the
moment or the last before it: its close at its last time when that is at or before the
moment, else its open at its first time (what is known of the bucket up to the moment); each
quote names the resolution that answered.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.config import SOURCES
from shared.errors import NotFound
from shared.queries.assets import resolve_asset
from shared.storage.rollups import horizons

AS_OF_BATCH_MAX = 100

# One backward probe of the quotes primary key (asset_id, source, observed_at) per source.
_AS_OF_SQL = text("""
SELECT s.source, q.source_asset_id, q.observed_at, CAST(q.price_usd AS text) AS price_usd,
       CAST(q.market_cap_usd AS text) AS market_cap_usd,
       CAST(q.volume_24h_usd AS text) AS volume_24h_usd
FROM unnest(CAST(:sources AS text[])) AS s(source)
CROSS JOIN LATERAL (
    SELECT * FROM quotes
    WHERE asset_id = :asset_id AND source = s.source AND observed_at <= :at
      AND observed_at >= :full_from
    ORDER BY observed_at DESC LIMIT 1) q
ORDER BY s.source
""")


# The same probe in a rollup table, within [low, high) of its buckets.
_ROLLUP_AS_OF = """
SELECT s.source, r.source_asset_id, r.first_observed_at, r.last_observed_at,
       CAST(r.open_usd AS text) AS open_usd, CAST(r.close_usd AS text) AS close_usd,
       CAST(r.market_cap_usd AS text) AS market_cap_usd,
       CAST(r.volume_24h_usd AS text) AS volume_24h_usd
FROM unnest(CAST(:sources AS text[])) AS s(source)
CROSS JOIN LATERAL (
    SELECT * FROM {table}
    WHERE asset_id = :asset_id AND source = s.source AND bucket_start <= :at
      AND first_observed_at <= :at AND bucket_start >= :low AND bucket_start < :high
    ORDER BY bucket_start DESC LIMIT 1) r
"""
_ROLLUPS = (("hourly", text(_ROLLUP_AS_OF.format(table="quotes_hourly"))),
            ("daily", text(_ROLLUP_AS_OF.format(table="quotes_daily"))))
_MIN = datetime.min.replace(tzinfo=timezone.utc)


def quotes_as_of(session: Session, asset_id: int, at: datetime,
                 sources: Sequence[str] = SOURCES) -> list[dict[str, Any]]:
    """Per source with a quote at or before `at`: that latest quote, its age in seconds and
    the resolution that answered."""
    marks = horizons(session.connection())
    full_from = marks.get("quotes", _MIN)
    rows = session.execute(_AS_OF_SQL, {"sources": list(sources), "asset_id": asset_id,
                                        "at": at, "full_from": full_from})
    answer = {}
    for row in rows:
        answer[row.source] = _quote(row.source, row.source_asset_id, row.observed_at,
                                    row.price_usd, row.market_cap_usd, row.volume_24h_usd, at,
                                    "full")
    # Older than the horizons: the hourly rollups, then the daily ones.
    bounds = {"hourly": (marks.get("quotes_hourly", _MIN), full_from),
              "daily": (_MIN, marks.get("quotes_hourly", _MIN))}
    for resolution, query in _ROLLUPS if "quotes" in marks else ():
        missing = [source for source in sources if source not in answer]
        low, high = bounds[resolution]
        if not missing or low >= high:
            continue
        for r in session.execute(query, {"sources": missing, "asset_id": asset_id, "at": at,
                                         "low": low, "high": high}):
            whole = r.last_observed_at <= at  # else only the bucket's start is known by `at`
            answer[r.source] = _quote(
                r.source, r.source_asset_id, r.last_observed_at if whole else r.first_observed_at,
                r.close_usd if whole else r.open_usd, r.market_cap_usd if whole else None,
                r.volume_24h_usd if whole else None, at, resolution)
    return [answer[source] for source in sorted(answer)]


def _quote(source: str, source_asset_id: str | None, observed_at: datetime, price: str | None,
           market_cap: str | None, volume: str | None, at: datetime, resolution: str
           ) -> dict[str, Any]:
    observed = observed_at.astimezone(timezone.utc)
    return {"source": source, "source_asset_id": source_asset_id,
            "observed_at": observed.isoformat(), "price_usd": price,
            "market_cap_usd": market_cap, "volume_24h_usd": volume,
            "age_seconds": (at - observed).total_seconds(), "resolution": resolution}


def asset_as_of(session: Session, ref: str, at: datetime, source: str | None = None
                ) -> dict[str, Any]:
    """The asset and, per source, its latest quote at or before `at` (NotFound if no asset)."""
    asset = resolve_asset(session, ref)
    return {"asset": {"id": asset.id, "slug": asset.slug, "symbol": asset.symbol,
                      "name": asset.name},
            "as_of": at.astimezone(timezone.utc).isoformat(),
            "quotes": quotes_as_of(session, asset.id, at, [source] if source else SOURCES)}


def batch_as_of(session: Session, pairs: Sequence[tuple[str, datetime]],
                source: str | None = None) -> list[dict[str, Any]]:
    """asset_as_of per (asset, time) pair, in order; an unknown asset is an item error."""
    items: list[dict[str, Any]] = []
    for ref, at in pairs:
        try:
            items.append({"asset_ref": ref, **asset_as_of(session, ref, at, source)})
        except NotFound as exc:
            items.append({"asset_ref": ref, "as_of": at.astimezone(timezone.utc).isoformat(),
                          "error": str(exc)})
    return items
