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
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Iterator, Mapping

from sqlalchemy import Connection, TextClause, text

from shared.config import SOURCES
from shared.storage.rollups import horizons

UTC = timezone.utc
_MIN = datetime.min.replace(tzinfo=UTC)
_WIDTH = {"hourly": timedelta(hours=1), "daily": timedelta(days=1)}

# One branch per resolution and source, walked backwards along the rollup's primary key
# (asset_id, source, bucket_start) and cut at `reach` (offset + limit) rows: a page reads the
# rows it shows (and the offset it skips), however many buckets the asset has. Ordering a
# branch by bucket_start is its (observed_at, source) order: a bucket's last time lies within
# it, so a later bucket's row is always later. The bucket bounds from since, until and the
# cursor are redundant with the time conditions; they give the index scan its range.
_BRANCH = """
(SELECT '{resolution}' AS resolution, asset_id, source, source_asset_id, bucket_start,
        last_observed_at AS observed_at, close_usd, market_cap_usd, volume_24h_usd, open_usd,
        high_usd, low_usd, quotes
 FROM quotes_{resolution}
 WHERE asset_id = :asset_id AND source = :source_{n}
   AND bucket_start >= :{resolution}_low AND bucket_start < :{resolution}_high
   AND bucket_start > :{resolution}_after_since AND bucket_start <= :until
   AND last_observed_at >= :since AND first_observed_at <= :until
   AND (CAST(:after_at AS timestamptz) IS NULL
        OR (bucket_start <= CAST(:after_at AS timestamptz)
            AND (last_observed_at, source) < (CAST(:after_at AS timestamptz),
                                              CAST(:after_source AS text))))
 ORDER BY bucket_start DESC LIMIT :reach)"""


@lru_cache(maxsize=None)
def _statement(sources: int, counted: bool) -> TextClause:
    """The rows (or their count) of `sources` sources (parameters source_0...)."""
    both = " UNION ALL ".join(_BRANCH.format(resolution=resolution, n=n)
                              for resolution in ("hourly", "daily") for n in range(sources))
    if counted:
        return text(f"SELECT count(*) FROM ({both}) r")
    return text(f"SELECT * FROM ({both}) r "
                "ORDER BY observed_at DESC, source DESC OFFSET :offset LIMIT :limit")


def full_from(conn: Connection) -> datetime | None:
    """Where the full rows start (None: nothing expired, every row is full)."""
    return horizons(conn).get("quotes")


def _after(since: datetime | None, width: timedelta) -> datetime:
    """The latest bucket start that ends at or before `since` (none before the first)."""
    try:
        return since - width if since else _MIN
    except OverflowError:
        return _MIN


def _params(conn: Connection, asset_id: int, source: str | None, since: datetime | None,
            until: datetime | None, marks: Mapping[str, datetime] | None) -> dict[str, Any]:
    """The range's parameters: hourly rows up to the quotes' horizon, daily ones up to the
    hourly horizon (none when nothing expired); `marks` the horizons already read, if any."""
    if marks is None:
        marks = horizons(conn)
    full, hourly = marks.get("quotes", _MIN), marks.get("quotes_hourly", _MIN)
    names = (source,) if source else SOURCES
    return {"asset_id": asset_id, "since": since or _MIN, "until": until or datetime.now(UTC),
            "hourly_low": hourly, "hourly_high": full, "daily_low": _MIN, "daily_high": hourly,
            "hourly_after_since": _after(since, _WIDTH["hourly"]),
            "daily_after_since": _after(since, _WIDTH["daily"]),
            "after_at": None, "after_source": None, "reach": None,
            **{f"source_{n}": name for n, name in enumerate(names)}}


def count(conn: Connection, asset_id: int, source: str | None, since: datetime | None,
          until: datetime | None, *, marks: Mapping[str, datetime] | None = None) -> int:
    """How many rollup rows of the range history shows (reads them all: only on request)."""
    params = _params(conn, asset_id, source, since, until, marks)
    statement = _statement(1 if source else len(SOURCES), True)
    return int(conn.execute(statement, params).scalar_one())


def rows(conn: Connection, asset_id: int, source: str | None, since: datetime | None,
         until: datetime | None, *, after: tuple[datetime, str] | None = None, offset: int = 0,
         limit: int | None = None, marks: Mapping[str, datetime] | None = None
         ) -> Iterator[SimpleNamespace]:
    """The rollup rows of the range, newest first (after the cursor's (time, source) when
    given), as attribute rows of the history's fields."""
    params = _params(conn, asset_id, source, since, until, marks)
    params.update(after_at=after[0] if after else None, after_source=after[1] if after else None,
                  offset=offset, limit=limit, reach=None if limit is None else offset + limit)
    statement = _statement(1 if source else len(SOURCES), False)
    for row in conn.execute(statement, params).mappings():
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
