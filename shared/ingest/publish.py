"""Publishing into current_quotes: the newest quote per (asset, source), written with its batch.

Each batch that inserted quotes publishes its assets in its own transaction (the batch
writer's end-of-batch statement), so a source's rows are served by `/data` from the commit that
stored them, whatever the other sources of the job are doing, and nothing committed can stay
unpublished: there is no later step to miss. Per asset, the batch's newest quote is looked
up by its key, and one stored earlier that is newer still was published when it was stored
(so the cost follows the batch's assets, not its quotes, and a quote committed by any earlier
run, finished or dead, is covered too); publish_assets, for any assets, reads the newest
stored quote one step back along the quotes' primary key. The upsert writes a row only
when it is newer or differs, and the data version moves only when a row was written
(migration 0010), so a batch that brings nothing new leaves the API's /data cache alone. A
quote's quality (current_quotes.quality) comes with it from the caller, built from the
quote's flags where the checks run (shared.quality.flags: the batch's newest quote per asset,
when flagged); a quote the caller has none for keeps the quality it was published with, and
a new one without is clean.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from shared.quality.checks import quality_of
from shared.quality.compact import flag_sets, stored_flags

# Parameters (psycopg2 style): %(source)s, %(assets)s (bigint[]), and the quality of flagged
# quotes as parallel arrays %(flagged)s (asset ids), %(flagged_at)s (their observed_at) and
# %(quality)s (jsonb), valid for rows written by run %(run)s (NULL: any run). {quotes} is
# one stored quote per touched asset: _NEWEST or _AT_BATCH_NEWEST.
_UPSERT = """
INSERT INTO current_quotes AS cur (asset_id, source, symbol, name, source_asset_id,
    observed_at, price_usd, market_cap_usd, volume_24h_usd, rank, quality, updated_at)
SELECT q.asset_id, q.source, a.symbol, a.name, q.source_asset_id, q.observed_at,
    q.price_usd, q.market_cap_usd, q.volume_24h_usd, q.rank, given.quality, now()
{quotes}
JOIN assets a ON a.id = q.asset_id
LEFT JOIN unnest(%(flagged)s::bigint[], %(flagged_at)s::timestamptz[], %(quality)s::jsonb[])
    AS given(asset_id, at, quality)
    ON given.asset_id = q.asset_id AND given.at = q.observed_at
    AND (CAST(%(run)s AS bigint) IS NULL OR q.run_id = CAST(%(run)s AS bigint))
ON CONFLICT (asset_id, source) DO UPDATE SET
    symbol = excluded.symbol, name = excluded.name,
    source_asset_id = excluded.source_asset_id, observed_at = excluded.observed_at,
    price_usd = excluded.price_usd, market_cap_usd = excluded.market_cap_usd,
    volume_24h_usd = excluded.volume_24h_usd, rank = excluded.rank,
    quality = CASE WHEN excluded.quality IS NOT NULL THEN excluded.quality
                   WHEN excluded.observed_at = cur.observed_at THEN cur.quality END,
    updated_at = now()
WHERE excluded.observed_at > cur.observed_at
   OR (excluded.observed_at = cur.observed_at
       AND (excluded.symbol, excluded.name, excluded.source_asset_id, excluded.price_usd,
            excluded.market_cap_usd, excluded.volume_24h_usd, excluded.rank,
            coalesce(excluded.quality, cur.quality))
           IS DISTINCT FROM (cur.symbol, cur.name, cur.source_asset_id, cur.price_usd,
                             cur.market_cap_usd, cur.volume_24h_usd, cur.rank, cur.quality))
"""

# The newest stored quote of the source for each asset: one step back along the quotes' key,
# through every time partition (each one's index is probed until a quote is found).
_NEWEST = """
FROM unnest(%(assets)s::bigint[]) AS touched(asset_id)
CROSS JOIN LATERAL (
    SELECT * FROM quotes q
    WHERE q.asset_id = touched.asset_id AND q.source = %(source)s
    ORDER BY q.observed_at DESC LIMIT 1
) q"""
# A batch's own newest quote of each asset, %(newest_at)s (timestamptz[], parallel to
# %(assets)s): one key lookup in the one partition holding it (the LIMIT keeps the lookup a
# parameterized subquery, which prunes the other partitions whatever the statistics say).
# It is the newest stored quote unless a newer one was stored before, and that one was
# published by the transaction that stored it (every batch publishes in its own), so the
# upsert's observed_at test keeps it: the outcome is the newest stored quote's, as with
# _NEWEST, without probing the partitions that cannot hold it.
_AT_BATCH_NEWEST = """
FROM unnest(%(assets)s::bigint[], %(newest_at)s::timestamptz[]) AS touched(asset_id, at)
CROSS JOIN LATERAL (
    SELECT * FROM quotes q
    WHERE q.asset_id = touched.asset_id AND q.source = %(source)s
        AND q.observed_at = touched.at
    LIMIT 1
) q"""
PUBLISH_SQL = _UPSERT.format(quotes=_NEWEST)
# What a batch's end publishes (shared.ingest.batch_writer): its assets' quotes at %(newest_at)s.
PUBLISH_BATCH_SQL = _UPSERT.format(quotes=_AT_BATCH_NEWEST)

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


# The newest stored quote of each asset with its flags (stored form and documents).
_NEWEST_FLAGGED = """
SELECT q.asset_id, q.observed_at, q.flag_set, q.jump_base_price, q.jump_base_us, q.price_usd,
    q.market_cap_usd, q.volume_24h_usd, q.circulating_supply, f.flags
FROM unnest(%(assets)s::bigint[]) AS touched(asset_id)
CROSS JOIN LATERAL (
    SELECT * FROM quotes q
    WHERE q.asset_id = touched.asset_id AND q.source = %(source)s
    ORDER BY q.observed_at DESC LIMIT 1
) q
LEFT JOIN quote_flags f
    ON f.asset_id = q.asset_id AND f.source = q.source AND f.observed_at = q.observed_at
WHERE q.flag_set IS NOT NULL OR f.flags IS NOT NULL
"""


def publish_assets(cursor: Any, source: str, asset_ids: Iterable[int]) -> int:
    """Publish the newest quote of `source` for these assets, in the caller's transaction,
    with the quality of its stored flags (one query for them, then the publish)."""
    assets = sorted(set(asset_ids))
    if not assets:
        return 0
    cursor.execute(_NEWEST_FLAGGED, {"source": source, "assets": assets})
    names = [column[0] for column in cursor.description]
    rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    sets = flag_sets(cursor, (row["flag_set"] for row in rows))
    given: dict[str, list[Any]] = {"flagged": [], "flagged_at": [], "quality": []}
    for row in rows:
        flags = stored_flags(sets, row, row["flags"])
        if flags:
            given["flagged"].append(row["asset_id"])
            given["flagged_at"].append(row["observed_at"])
            given["quality"].append(json.dumps(quality_of(flags), separators=(",", ":")))
    cursor.execute(PUBLISH_SQL, {"source": source, "assets": assets, "run": None, **given})
    return int(cursor.rowcount)


def unpublished(cursor: Any) -> list[tuple[int, str]]:
    """(asset_id, source) pairs whose newest quote is missing from current_quotes."""
    cursor.execute(UNPUBLISHED_SQL)
    return [(int(asset_id), str(source)) for asset_id, source in cursor.fetchall()]
