"""Outliers among an asset's current quotes: judged after each publish, kept as flag documents."""
from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Any, NamedTuple, Sequence

from sqlalchemy.orm import Session

from shared.quality.anomalies import Anomaly, quote_anomalies, record_anomalies
from shared.quality.checks import OUTLIER, QualityThresholds, outlier_flags, quality_of


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class _Current(NamedTuple):
    asset_id: int
    source: str
    observed_at: datetime
    price_usd: Any
    quality: dict[str, Any] | None


# The current quotes of the touched assets that have at least three sources (an outlier needs
# two others to be judged against).
_CURRENT_OF_SHARED = """
SELECT asset_id, source, observed_at, price_usd, quality FROM current_quotes
WHERE asset_id IN (
    SELECT asset_id FROM current_quotes WHERE asset_id = ANY(%(assets)s::bigint[])
    GROUP BY asset_id HAVING count(*) >= 3)
ORDER BY asset_id, source
"""
_SET_QUALITY = """
UPDATE current_quotes SET quality = %(quality)s::jsonb, updated_at = now()
WHERE asset_id = %(asset)s AND source = %(source)s AND observed_at = %(at)s
"""
# A quote's outlier flag among its flag documents: set (replacing an older one), or cleared
# (the row goes once no document is left).
_WITHOUT_OUTLIER = ("(SELECT coalesce(jsonb_agg(e), '[]'::jsonb) FROM jsonb_array_elements({}) e "
                    f"WHERE e->>'flag' <> '{OUTLIER}')")
_KEY = "asset_id = %(asset)s AND source = %(source)s AND observed_at = %(at)s"
_SET_OUTLIER = f"""
INSERT INTO quote_flags AS f (asset_id, source, observed_at, flags)
VALUES (%(asset)s, %(source)s, %(at)s, %(flags)s::jsonb)
ON CONFLICT (asset_id, source, observed_at) DO UPDATE
SET flags = {_WITHOUT_OUTLIER.format("f.flags")} || excluded.flags
"""
_CLEAR_OUTLIER = f"""
WITH gone AS (DELETE FROM quote_flags WHERE {_KEY}
              AND {_WITHOUT_OUTLIER.format("flags")} = '[]'::jsonb)
UPDATE quote_flags SET flags = {_WITHOUT_OUTLIER.format("flags")}
WHERE {_KEY} AND {_WITHOUT_OUTLIER.format("flags")} NOT IN ('[]'::jsonb, flags)
"""


def apply_outliers(session: Session, cursor: Any, asset_ids: Sequence[int],
                   thresholds: QualityThresholds) -> int:
    """Judge outliers among the current quotes of these assets; returns quotes changed.

    A quote's outlier flag is recomputed from scratch (its other flags kept): a quote that was
    an outlier is cleared once the others agree with it again. Runs after the batch published,
    in its transaction, so current_quotes and quote_flags change together. The caller passes
    BatchQuality.outlier_assets; an asset whose third source commits in between is judged by
    that source's own batch, or at the next publish touching it.
    """
    if not asset_ids:
        return 0
    cursor.execute(_CURRENT_OF_SHARED, {"assets": sorted(set(asset_ids))})
    by_asset: dict[int, list[_Current]] = defaultdict(list)
    for row in cursor.fetchall():
        by_asset[int(row[0])].append(_Current(*row))
    changed = 0
    found: list[Anomaly] = []
    for quotes in by_asset.values():
        kept = {q.source: [f for f in (q.quality or {}).get("flags", [])
                           if f["flag"] != OUTLIER] for q in quotes}
        outliers = outlier_flags(quotes, thresholds, kept)
        for q in quotes:
            flags = kept[q.source] + ([outliers[q.source]] if q.source in outliers else [])
            new = quality_of(flags)
            if new == q.quality:
                continue
            changed += 1
            key = {"asset": q.asset_id, "source": q.source, "at": q.observed_at}
            cursor.execute(_SET_QUALITY, {**key, "quality": None if new is None
                                          else _dumps(new)})
            if q.source in outliers:
                cursor.execute(_SET_OUTLIER, {**key, "flags": _dumps([outliers[q.source]])})
                found.extend(quote_anomalies(q.source, q.asset_id, q.observed_at,
                                             [outliers[q.source]]))
            else:
                cursor.execute(_CLEAR_OUTLIER, key)
    record_anomalies(session, found)
    return changed
