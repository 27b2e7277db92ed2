"""Point-in-time lookups: per source, an asset's latest quote at or before a moment, and its age."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.config import SOURCES
from shared.errors import NotFound
from shared.queries.assets import resolve_asset

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
    ORDER BY observed_at DESC LIMIT 1) q
ORDER BY s.source
""")


def quotes_as_of(session: Session, asset_id: int, at: datetime,
                 sources: Sequence[str] = SOURCES) -> list[dict[str, Any]]:
    """Per source with a quote at or before `at`: that latest quote and its age in seconds."""
    rows = session.execute(_AS_OF_SQL, {"sources": list(sources), "asset_id": asset_id,
                                        "at": at})
    answer = []
    for row in rows:
        observed = row.observed_at.astimezone(timezone.utc)
        answer.append({
            "source": row.source, "source_asset_id": row.source_asset_id,
            "observed_at": observed.isoformat(), "price_usd": row.price_usd,
            "market_cap_usd": row.market_cap_usd, "volume_24h_usd": row.volume_24h_usd,
            "age_seconds": (at - observed).total_seconds(),
        })
    return answer


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
