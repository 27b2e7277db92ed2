"""Publishing into current_quotes: the newest quote per (asset, source), written with its batch.

Each batch that inserted quotes publishes its assets in its own transaction (the batch
writer's end-of-batch statement), so a source's rows are served by `/data` from the commit that
stored them, whatever the other sources of the job are doing, and nothing committed can stay
unpublished: there is no later step to miss. Per asset, the newest stored quote of the
source is one step back along the quotes' primary key (so the cost follows the batch's
assets, not its quotes, and a quote committed by any earlier run, finished or dead, is
covered too). The upsert writes a row only when it is newer or differs, and the data version
moves only when a row was written (migration 0010), so a batch that brings nothing new leaves
the API's /data cache alone. A quote's quality flags (quote_flags, stored by the same batch
before it publishes: shared.quality.flags) are published with it as current_quotes.quality.
"""
from __future__ import annotations

from typing import Any, Iterable

# Parameters (psycopg2 style): %(source)s, %(assets)s (bigint[]).
PUBLISH_SQL = """
INSERT INTO current_quotes AS cur (asset_id, source, symbol, name, source_asset_id,
    observed_at, price_usd, market_cap_usd, volume_24h_usd, rank, quality, updated_at)
SELECT q.asset_id, q.source, a.symbol, a.name, q.source_asset_id, q.observed_at,
    q.price_usd, q.market_cap_usd, q.volume_24h_usd, q.rank,
    CASE WHEN f.flags IS NULL THEN NULL
         ELSE jsonb_build_object('status', 'flagged', 'flags', f.flags) END, now()
FROM unnest(%(assets)s::bigint[]) AS touched(asset_id)
CROSS JOIN LATERAL (
    SELECT * FROM quotes q
    WHERE q.asset_id = touched.asset_id AND q.source = %(source)s
    ORDER BY q.observed_at DESC LIMIT 1
) q
JOIN assets a ON a.id = q.asset_id
LEFT JOIN quote_flags f
    ON f.asset_id = q.asset_id AND f.source = q.source AND f.observed_at = q.observed_at
ON CONFLICT (asset_id, source) DO UPDATE SET
    symbol = excluded.symbol, name = excluded.name,
    source_asset_id = excluded.source_asset_id, observed_at = excluded.observed_at,
    price_usd = excluded.price_usd, market_cap_usd = excluded.market_cap_usd,
    volume_24h_usd = excluded.volume_24h_usd, rank = excluded.rank,
    quality = excluded.quality, updated_at = now()
WHERE excluded.observed_at > cur.observed_at
   OR (excluded.observed_at = cur.observed_at
       AND (excluded.symbol, excluded.name, excluded.source_asset_id, excluded.price_usd,
            excluded.market_cap_usd, excluded.volume_24h_usd, excluded.rank, excluded.quality)
           IS DISTINCT FROM (cur.symbol, cur.name, cur.source_asset_id, cur.price_usd,
                             cur.market_cap_usd, cur.volume_24h_usd, cur.rank, cur.quality))
"""

# (asset, source) pairs whose newest stored quote is not the one in current_quotes. A full
# scan of quotes: for checks (tests, operators), never on the ingest path.
UNPUBLISHED_SQL = """
SELECT n.asset_id, n.source FROM (
    SELECT DISTINCT ON (asset_id, source) asset_id, source, observed_at
    FROM quotes ORDER BY asset_id, source, observed_at DESC
) n
LEFT JOIN current_quotes c ON c.asset_id = n.asset_id AND c.source = n.source
WHERE c.observed_at IS DISTINCT FROM n.observed_at
ORDER BY n.source, n.asset_id
"""


def publish_assets(cursor: Any, source: str, asset_ids: Iterable[int]) -> int:
    """Publish the newest quote of `source` for these assets, in the caller's transaction."""
    assets = sorted(set(asset_ids))
    if not assets:
        return 0
    cursor.execute(PUBLISH_SQL, {"source": source, "assets": assets})
    return int(cursor.rowcount)


def unpublished(cursor: Any) -> list[tuple[int, str]]:
    """(asset_id, source) pairs whose newest quote is missing from current_quotes."""
    cursor.execute(UNPUBLISHED_SQL)
    return [(int(asset_id), str(source)) for asset_id, source in cursor.fetchall()]
