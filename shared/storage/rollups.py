"""Quote rollups: one partition's rows folded into hourly or daily OHLC rows, and the horizons.

A fold reads one physical table (a quotes partition into quotes_hourly, an hourly partition
into quotes_daily) and writes one row per asset, source and bucket with the candles'
convention (shared.queries.candles): open = the first non-null price by time (a row's own
open when it carries OHLC), close = the last, high/low = max/min, volume and market cap those
of the bucket's last row, `quotes` the rows folded. Buckets start on multiples of their width
since 1970-01-01T00:00Z, as candles' do, and partitions start on a UTC Monday or a January
1st, so a bucket never straddles two partitions: folding a partition gives whole buckets, and
a candle of 1h, 4h or 1d computed from the rollups equals the one computed from the rows.

Two ways to write a bucket that exists already (ON CONFLICT): `replace` (the bucket's rows
all came from this table: a fold repeated after a crash writes the same values) and `merge`
(rows written later into a range already folded, in a partition made again: their bucket
is combined with the folded one, open from the earlier rows, close from the later).

The horizons (table retention_horizons) say where each resolution starts: full rows from
horizon('quotes') on, hourly rollups from horizon('quotes_hourly') to it, daily before.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Connection, text

from shared.storage.partitions import QUOTES, QUOTES_DAILY, QUOTES_HOURLY, PartitionedTable

UTC = timezone.utc
RESOLUTIONS = ("full", "hourly", "daily")
_COLUMNS = ("asset_id, source, bucket_start, source_asset_id, open_usd, high_usd, low_usd, "
            "close_usd, volume_24h_usd, market_cap_usd, quotes, first_observed_at, "
            "last_observed_at")
_EPOCH = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"

# quotes rows -> hourly buckets (the candles' aggregates of shared.queries.candles).
_FROM_QUOTES = f"""
SELECT asset_id, source, date_bin(INTERVAL '1 hour', observed_at, {_EPOCH}) AS bucket,
       (array_agg(source_asset_id ORDER BY observed_at DESC))[1],
       (array_agg(coalesce(open_usd, price_usd) ORDER BY observed_at)
          FILTER (WHERE coalesce(open_usd, price_usd) IS NOT NULL))[1],
       max(coalesce(high_usd, price_usd)), min(coalesce(low_usd, price_usd)),
       (array_agg(coalesce(close_usd, price_usd) ORDER BY observed_at DESC)
          FILTER (WHERE coalesce(close_usd, price_usd) IS NOT NULL))[1],
       (array_agg(volume_24h_usd ORDER BY observed_at DESC))[1],
       (array_agg(market_cap_usd ORDER BY observed_at DESC))[1],
       count(*), min(observed_at), max(observed_at)
FROM "{{table}}" GROUP BY asset_id, source, bucket
"""
# Rollup rows (hourly) -> coarser buckets: the same aggregates over the buckets' own.
ROLLUP_AGGREGATES = """
       (array_agg(source_asset_id ORDER BY last_observed_at DESC))[1] AS source_asset_id,
       (array_agg(open_usd ORDER BY first_observed_at)
          FILTER (WHERE open_usd IS NOT NULL))[1] AS open_usd,
       max(high_usd) AS high_usd, min(low_usd) AS low_usd,
       (array_agg(close_usd ORDER BY last_observed_at DESC)
          FILTER (WHERE close_usd IS NOT NULL))[1] AS close_usd,
       (array_agg(volume_24h_usd ORDER BY last_observed_at DESC))[1] AS volume_24h_usd,
       (array_agg(market_cap_usd ORDER BY last_observed_at DESC))[1] AS market_cap_usd,
       sum(quotes) AS quotes, min(first_observed_at) AS first_observed_at,
       max(last_observed_at) AS last_observed_at"""
_FROM_HOURLY = f"""
SELECT asset_id, source, date_bin(INTERVAL '1 day', bucket_start, {_EPOCH}) AS bucket,
{ROLLUP_AGGREGATES}
FROM "{{table}}" GROUP BY asset_id, source, bucket
"""
_REPLACE = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ")[3:])
# The later rows' values where they are later, the earlier's open, extremes of both.
_MERGE = """
source_asset_id = CASE WHEN excluded.last_observed_at > r.last_observed_at
                       THEN excluded.source_asset_id ELSE r.source_asset_id END,
open_usd = CASE WHEN r.open_usd IS NULL OR (excluded.open_usd IS NOT NULL
                     AND excluded.first_observed_at < r.first_observed_at)
                THEN excluded.open_usd ELSE r.open_usd END,
high_usd = greatest(r.high_usd, excluded.high_usd),
low_usd = least(r.low_usd, excluded.low_usd),
close_usd = CASE WHEN r.close_usd IS NULL OR (excluded.close_usd IS NOT NULL
                      AND excluded.last_observed_at > r.last_observed_at)
                 THEN excluded.close_usd ELSE r.close_usd END,
volume_24h_usd = CASE WHEN excluded.last_observed_at > r.last_observed_at
                      THEN excluded.volume_24h_usd ELSE r.volume_24h_usd END,
market_cap_usd = CASE WHEN excluded.last_observed_at > r.last_observed_at
                      THEN excluded.market_cap_usd ELSE r.market_cap_usd END,
quotes = r.quotes + excluded.quotes,
first_observed_at = least(r.first_observed_at, excluded.first_observed_at),
last_observed_at = greatest(r.last_observed_at, excluded.last_observed_at)
"""


@dataclass(frozen=True)
class Fold:
    """What expires from `source` goes into `target` (a rollup of `resolution`)."""

    source: PartitionedTable
    target: PartitionedTable
    resolution: str
    select: str


TO_HOURLY = Fold(QUOTES, QUOTES_HOURLY, "hourly", _FROM_QUOTES)
TO_DAILY = Fold(QUOTES_HOURLY, QUOTES_DAILY, "daily", _FROM_HOURLY)


def fold(conn: Connection, spec: Fold, table: str, merge: bool) -> int:
    """Fold the rows of `table` (a partition of spec.source, attached or detached) into
    spec.target in the caller's transaction; the source rows folded (with `replace`: the
    written buckets' `quotes`, so it is also `table`'s row count of a quotes partition)."""
    on_conflict = _MERGE if merge else _REPLACE
    return int(conn.execute(text(
        f"WITH written AS (INSERT INTO {spec.target.name} AS r ({_COLUMNS}) "
        f"{spec.select.format(table=table)} ON CONFLICT (asset_id, source, bucket_start) "
        f"DO UPDATE SET {on_conflict} RETURNING quotes) "
        "SELECT coalesce(sum(quotes), 0) FROM written")).scalar_one())


def horizons(conn: Connection) -> dict[str, datetime]:
    """Table name -> where its rows start (absent: nothing of it expired yet)."""
    return {name: at.astimezone(UTC) for name, at in conn.execute(
        text("SELECT name, horizon FROM retention_horizons"))}


def advance_horizon(conn: Connection, name: str, horizon: datetime) -> None:
    """Move `name`'s horizon forward to `horizon` (never back), in the caller's transaction."""
    conn.execute(text(
        "INSERT INTO retention_horizons (name, horizon) VALUES (:n, :h) ON CONFLICT (name) "
        "DO UPDATE SET horizon = greatest(retention_horizons.horizon, excluded.horizon)"),
        {"n": name, "h": horizon})
