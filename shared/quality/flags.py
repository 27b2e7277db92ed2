"""Quality flags on the write path: batch flags stored with the quotes, outliers later.

A batch's flags are computed where its quotes are rendered (the ingest BatchWriter, in the
read-ahead thread for CSV), stored sparsely in quote_flags in the batch's transaction, and
published with the quote (shared.ingest.publish joins them into current_quotes.quality). Outliers
need the other sources' quotes, so they are judged after the batch published, for the assets
it touched. docs/quality.md gives the rules and costs.
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple, Sequence

from sqlalchemy.orm import Session

from shared.quality.anomalies import Anomaly, quote_anomalies, record_anomalies
from shared.quality.checks import (
    OUTLIER,
    Flag,
    QualityThresholds,
    check_batch,
    check_columns,
    outlier_flags,
    quality_of,
)
from shared.batch.types import Batch

# (asset_id, observed_at, flags) of one flagged quote; observed_at as a datetime or ISO text.
Flagged = tuple[int, Any, list[Flag]]


def _iso(value: datetime) -> str:
    # The CSV blocks' stamps are UTC isoformat() text; the previous quote's time must compare.
    return value.astimezone(timezone.utc).isoformat()


def _floats(texts: Sequence[str]) -> list[float | None]:
    return list(map(float, texts))


# Per asset of a batch, one query: the source's published quote (the previous quote a jump is
# judged against) and how many other sources have a priced quote (an outlier needs two).
_PREVIOUS_AND_OTHERS = """
SELECT asset_id,
    max(observed_at) FILTER (WHERE source = %(source)s AND price_usd IS NOT NULL),
    max(price_usd) FILTER (WHERE source = %(source)s),
    count(*) FILTER (WHERE source <> %(source)s AND price_usd IS NOT NULL)
FROM current_quotes WHERE asset_id = ANY(%(assets)s::bigint[])
GROUP BY asset_id
"""


@dataclass(frozen=True)
class BatchQuality:
    """A batch's flagged quotes, and the assets whose outliers to judge after it publishes."""

    flags: list[Flagged] = field(default_factory=list)
    # Assets that two other sources quote: only there can an outlier be told. Found before
    # the batch's turn (the read-ahead thread), so a batch of assets no other source has
    # spends nothing on outliers while batches wait for its commit.
    outlier_assets: list[int] = field(default_factory=list)


def batch_flags(cursor: Any, source: str, batch: Batch, assets: dict[str, int],
                thresholds: QualityThresholds) -> BatchQuality:
    """The flagged quotes of a batch whose coins resolved to `assets` (one query).

    CSV blocks (the fast path's lines) are checked for jumps, one call per coin over the
    price column (times as ISO text): parsing the market cap and volume of every line too
    would cost about 15% of ingest on this machine (docs/quality.md); lines of the general
    path and API quotes get every check, as objects. An API page's quotes are judged stale
    against the page's own clock, the median of its quotes' times (at most now): a page
    recorded in 2022 is not stale as a whole, its coins hours behind the rest are, so a
    replayed page judges as it did live; one coin dated in the future cannot make the rest
    of its page stale.
    """
    # `assets` is the run's whole identity cache: only this batch's coins are looked up.
    ids = {assets[b.source_asset_id] for b in batch.quote_blocks}
    ids.update(assets[q.source_asset_id] for q in batch.quotes)
    if not ids:
        return BatchQuality()
    cursor.execute(_PREVIOUS_AND_OTHERS, {"source": source, "assets": sorted(ids)})
    previous: dict[int, tuple[datetime, float]] = {}
    shared: list[int] = []
    for asset_id, at, price, others in cursor.fetchall():
        if at is not None and price is not None:
            previous[int(asset_id)] = (at, float(price))
        if others >= 2:
            shared.append(int(asset_id))
    found: list[Flagged] = []
    for block in batch.quote_blocks:
        if not block.prices:
            continue
        asset_id = assets[block.source_asset_id]
        prev = previous.get(asset_id)
        flags = check_columns(
            source, [asset_id] * block.rows, block.stamps, _floats(block.prices), thresholds,
            previous={asset_id: (_iso(prev[0]), prev[1])} if prev else None)
        found.extend((asset_id, block.stamps[i], f) for i, f in flags.items())
    if batch.quotes:
        quotes = batch.quotes
        fetched_at = min(statistics.median_high(q.observed_at for q in quotes),
                         datetime.now(timezone.utc))
        flags = check_batch(source, quotes, fetched_at, thresholds, previous=previous,
                            key=lambda q: assets[q.source_asset_id])
        found.extend((assets[quotes[i].source_asset_id], quotes[i].observed_at, f)
                     for i, f in flags.items())
    return BatchQuality(found, sorted(shared))


# Only flagged quotes get a row (migration 0011), and a re-check replaces a quote's flags: the
# one upsert of quote_flags, from parallel arrays %(assets)s, %(times)s, %(flags)s (one unnest,
# whose row count PostgreSQL knows: a set-returning function over one JSON document made it
# guess 100 rows a quote, sort on disk and compile the plan).
_UPSERT_FLAGS = """
INSERT INTO quote_flags AS f (asset_id, source, observed_at, flags)
SELECT a, %(source)s, t, fl
FROM unnest(%(assets)s::bigint[], %(times)s::timestamptz[], %(flags)s::jsonb[]) AS v(a, t, fl)
ON CONFLICT (asset_id, source, observed_at) DO UPDATE SET flags = excluded.flags
WHERE f.flags IS DISTINCT FROM excluded.flags
"""

# A batch's flagged quotes in one statement: their flags (_UPSERT_FLAGS) and the data
# anomalies, as parallel arrays too. One anomaly per flag kind and asset of the batch, keyed
# and shaped like its first flagged quote's (quality.anomalies.quote_anomalies), plus how many
# of the batch's quotes of that asset carry the flag and the last one's time: a coin with a
# thousand bad rows is one line of /anomalies, not a thousand.
_STORE_BATCH_FLAGS = f"""
WITH stored AS ({_UPSERT_FLAGS})
INSERT INTO anomalies (kind, source, key, run_id, observed_at, evidence)
SELECT kind, %(source)s, k, %(run)s, t, ev
FROM unnest(%(kinds)s::text[], %(keys)s::text[], %(first)s::timestamptz[],
            %(evidence)s::jsonb[]) AS x(kind, k, t, ev)
ON CONFLICT (kind, source, key) DO NOTHING
"""


def _stamp(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def store_flags(cursor: Any, source: str,
                flagged: Sequence[tuple[int, datetime, Sequence[Flag]]]) -> int:
    """Store (asset_id, observed_at, flags) of flagged quotes in the caller's transaction;
    returns how many rows changed (flags equal to the stored ones change nothing)."""
    if not flagged:
        return 0
    cursor.execute(_UPSERT_FLAGS, {
        "source": source, "assets": [a for a, _, _ in flagged],
        "times": [t for _, t, _ in flagged], "flags": [_dumps(list(f)) for _, _, f in flagged],
    })
    return int(cursor.rowcount)


def store_batch_flags(cursor: Any, source: str, run_id: int | None,
                      flagged: Sequence[Flagged]) -> int:
    """Store a batch's flags and its data anomalies; returns how many anomalies were new."""
    if not flagged:
        return 0
    # One entry per quote key (a repeated line must not upsert its quote twice in one statement),
    # in time order per asset (ISO 8601 UTC text of one source sorts as time does).
    unique = {(a, _stamp(t)): (a, t, f) for a, t, f in flagged}
    first: dict[tuple[str, int], tuple[str, Any, Flag]] = {}
    counts: dict[tuple[str, int], list[Any]] = {}
    for (asset_id, stamp), (_, observed_at, flags) in sorted(unique.items()):
        for flag in flags:
            group = (flag["flag"], asset_id)
            if group not in first:
                first[group] = (stamp, observed_at, flag)
                counts[group] = [0, stamp]
            counts[group][0] += 1
            counts[group][1] = stamp
    cursor.execute(_STORE_BATCH_FLAGS, {
        "source": source, "run": run_id,
        "assets": [a for a, _ in unique],
        "times": [t for _, t, _ in unique.values()],
        "flags": [_dumps(f) for _, _, f in unique.values()],
        "kinds": [kind for kind, _ in first],
        "keys": [f"quote:{a}:{first[(k, a)][0]}" for k, a in first],
        "first": [observed_at for _, observed_at, _ in first.values()],
        "evidence": [_dumps({"asset_id": a, "reason": flag["reason"], **flag["evidence"],
                             "quotes": counts[(k, a)][0], "last_observed_at": counts[(k, a)][1]})
                     for (k, a), (_, _, flag) in first.items()],
    })
    return int(cursor.rowcount)


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
_DROP_FLAGS = """
DELETE FROM quote_flags WHERE asset_id = %(asset)s AND source = %(source)s
    AND observed_at = %(at)s
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
                                          else json.dumps(new, separators=(",", ":"))})
            if flags:
                store_flags(cursor, q.source, [(q.asset_id, q.observed_at, flags)])
            else:
                cursor.execute(_DROP_FLAGS, key)
            if q.source in outliers:
                found.extend(quote_anomalies(q.source, q.asset_id, q.observed_at,
                                             [outliers[q.source]]))
    record_anomalies(session, found)
    return changed
