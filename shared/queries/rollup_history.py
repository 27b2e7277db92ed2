"""History rows past retention's horizon: one per rollup bucket, in the history's order.

Where retention replaced an asset's quotes by hourly (then daily) rollups
(shared.storage.rollups), its history goes on with one row per bucket and source, newest
first like the quotes before it: `observed_at` the bucket's last time and `price_usd` its close
(what a quote at that time said), open/high/low/close the bucket's, `quotes` the rows folded,
`resolution` hourly or daily. Every such row is older than every full row (they end before the
quotes' horizon), so a page or an export reads the full rows, then these.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, Iterator

from sqlalchemy import Connection, text

from shared.storage.rollups import horizons

UTC = timezone.utc
_MIN = datetime.min.replace(tzinfo=UTC)
_WIDTH = {"hourly": timedelta(hours=1), "daily": timedelta(days=1)}

_ROWS = """
SELECT '{resolution}' AS resolution, asset_id, source, source_asset_id, bucket_start,
       last_observed_at AS observed_at, close_usd, market_cap_usd, volume_24h_usd, open_usd,
       high_usd, low_usd, quotes
FROM quotes_{resolution}
WHERE asset_id = :asset_id AND (CAST(:source AS text) IS NULL OR source = :source)
  AND bucket_start >= :{resolution}_low AND bucket_start < :{resolution}_high
  AND last_observed_at >= :since AND first_observed_at <= :until
"""
_BOTH = (f"({_ROWS.format(resolution='hourly')} UNION ALL {_ROWS.format(resolution='daily')})")
_SELECT = text(
    f"SELECT * FROM {_BOTH} r WHERE (CAST(:after_at AS timestamptz) IS NULL "
    "OR (observed_at, source) < (CAST(:after_at AS timestamptz), CAST(:after_source AS text))) "
    "ORDER BY observed_at DESC, source DESC OFFSET :offset LIMIT :limit")
_COUNT = text(f"SELECT count(*) FROM {_BOTH} r")


def full_from(conn: Connection) -> datetime | None:
    """Where the full rows start (None: nothing expired, every row is full)."""
    return horizons(conn).get("quotes")


def _params(conn: Connection, asset_id: int, source: str | None, since: datetime | None,
            until: datetime | None) -> dict[str, Any]:
    """The range's parameters: hourly rows up to the quotes' horizon, daily ones up to the
    hourly horizon (none when nothing expired)."""
    marks = horizons(conn)
    full, hourly = marks.get("quotes", _MIN), marks.get("quotes_hourly", _MIN)
    return {"asset_id": asset_id, "source": source, "since": since or _MIN,
            "until": until or datetime.now(UTC), "hourly_low": hourly, "hourly_high": full,
            "daily_low": _MIN, "daily_high": hourly}


def count(conn: Connection, asset_id: int, source: str | None, since: datetime | None,
          until: datetime | None) -> int:
    """How many rollup rows of the range history shows."""
    return int(conn.execute(_COUNT, _params(conn, asset_id, source, since, until)).scalar_one())


def rows(conn: Connection, asset_id: int, source: str | None, since: datetime | None,
         until: datetime | None, *, after: tuple[datetime, str] | None = None, offset: int = 0,
         limit: int | None = None) -> Iterator[SimpleNamespace]:
    """The rollup rows of the range, newest first (after the cursor's (time, source) when
    given), as attribute rows of the history's fields."""
    params = _params(conn, asset_id, source, since, until)
    params.update(after_at=after[0] if after else None, after_source=after[1] if after else None,
                  offset=offset, limit=limit)
    for row in conn.execute(_SELECT, params).mappings():
        bucket = row["bucket_start"].astimezone(UTC)
        yield SimpleNamespace(
            asset_id=row["asset_id"], source=row["source"],
            source_asset_id=row["source_asset_id"], observed_at=row["observed_at"],
            price_usd=row["close_usd"], market_cap_usd=row["market_cap_usd"],
            volume_24h_usd=row["volume_24h_usd"], circulating_supply=None, total_supply=None,
            max_supply=None, rank=None, open_usd=row["open_usd"], high_usd=row["high_usd"],
            low_usd=row["low_usd"], close_usd=row["close_usd"], run_id=None, quality=None,
            resolution=row["resolution"], bucket_start=bucket.isoformat(),
            bucket_end=(bucket + _WIDTH[row["resolution"]]).isoformat(),
            quotes=int(row["quotes"]))
