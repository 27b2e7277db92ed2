"""Quality I/O for the batch path: previous prices in one query, flags stored sparsely."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Iterable, Sequence

from shared.quality.checks import Flag

# Parameters (psycopg2 style): %(source)s, %(assets)s (bigint[]). The newest published quote
# per asset is the previous quote a batch's jump check compares against.
PREVIOUS_PRICES_SQL = """
SELECT asset_id, observed_at, price_usd FROM current_quotes
WHERE source = %(source)s AND asset_id = ANY(%(assets)s::bigint[]) AND price_usd IS NOT NULL
"""

# Only flagged quotes get a row (migration 0011); a re-check replaces a quote's flags.
STORE_FLAGS_SQL = """
INSERT INTO quote_flags AS f (asset_id, source, observed_at, flags)
SELECT a, %(source)s, t, fl
FROM unnest(%(assets)s::bigint[], %(times)s::timestamptz[], %(flags)s::jsonb[]) AS v(a, t, fl)
ON CONFLICT (asset_id, source, observed_at) DO UPDATE SET flags = excluded.flags
WHERE f.flags IS DISTINCT FROM excluded.flags
"""

# The flags of given quotes, for serving history or re-publishing.
FLAGS_OF_SQL = """
SELECT asset_id, observed_at, flags FROM quote_flags
WHERE source = %(source)s AND asset_id = ANY(%(assets)s::bigint[])
"""


def previous_prices(cursor: Any, source: str,
                    asset_ids: Iterable[int]) -> dict[int, tuple[datetime, float]]:
    """{asset_id: (observed_at, price)} of `source`'s published quotes, one query."""
    assets = sorted(set(asset_ids))
    if not assets:
        return {}
    cursor.execute(PREVIOUS_PRICES_SQL, {"source": source, "assets": assets})
    return {int(a): (at, float(p)) for a, at, p in cursor.fetchall()}


def store_flags(cursor: Any, source: str,
                flagged: Sequence[tuple[int, datetime, Sequence[Flag]]]) -> int:
    """Store (asset_id, observed_at, flags) of flagged quotes in the caller's transaction."""
    if not flagged:
        return 0
    cursor.execute(STORE_FLAGS_SQL, {
        "source": source,
        "assets": [a for a, _, _ in flagged],
        "times": [t for _, t, _ in flagged],
        "flags": [json.dumps(list(f), separators=(",", ":")) for _, _, f in flagged],
    })
    return int(cursor.rowcount)


def flags_of(cursor: Any, source: str,
             asset_ids: Iterable[int]) -> dict[tuple[int, datetime], list[Flag]]:
    """{(asset_id, observed_at): flags} stored for `source`'s quotes of these assets."""
    assets = sorted(set(asset_ids))
    if not assets:
        return {}
    cursor.execute(FLAGS_OF_SQL, {"source": source, "assets": assets})
    return {(int(a), at): list(flags) for a, at, flags in cursor.fetchall()}
