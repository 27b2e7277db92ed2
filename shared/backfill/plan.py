"""Backfill planning without I/O: chunk windows by CoinGecko's granularity rules, dry-run cost."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Sequence

from shared.config import RateLimit

DAY = 86_400
FIVE_MINUTES, HOUR = 300, 3_600
# CoinGecko market_chart/range: 5-minute points up to 1 day, hourly up to 90 days, daily beyond.
FIVE_MINUTE_MAX_SECONDS = DAY
HOURLY_MAX_SECONDS = 90 * DAY


def granularity_seconds(span_seconds: float) -> int:
    """The spacing of the points CoinGecko returns for a range of this length."""
    if span_seconds <= FIVE_MINUTE_MAX_SECONDS:
        return FIVE_MINUTES
    if span_seconds <= HOURLY_MAX_SECONDS:
        return HOUR
    return DAY


@dataclass(frozen=True)
class Window:
    """One chunk's time range, both ends inclusive, and the granularity it will come back in."""

    start: datetime
    end: datetime

    @property
    def granularity(self) -> int:
        """Seconds between the points of this window."""
        return granularity_seconds((self.end - self.start).total_seconds())


def plan_windows(since: datetime, until: datetime, chunk_days: int) -> list[Window]:
    """Cut [since, until] into windows of at most `chunk_days` that neither overlap nor gap.

    A window covers [start, start + chunk] and the next starts one second later, so a point on
    the boundary belongs to exactly one chunk. With the default 90 days a chunk is the longest
    range CoinGecko still answers hourly: the fewest requests for hourly history.
    """
    if until <= since:
        return []
    size = timedelta(days=chunk_days)
    windows: list[Window] = []
    start = since
    while start <= until:
        end = min(start + size, until)
        windows.append(Window(start, end))
        start = end + timedelta(seconds=1)
    return windows


def backfill_share(rate: RateLimit, share: float) -> RateLimit:
    """The part of a source's quota a backfill may use: at least one request per window."""
    return RateLimit(max(1, math.floor(rate.requests * share)), rate.period_seconds)


def estimate(requests: int, rate: RateLimit, share: float) -> dict[str, Any]:
    """A dry run's answer: requests and the seconds they take at the backfill's share."""
    slots = backfill_share(rate, share)
    windows = math.ceil(requests / slots.requests) if requests else 0
    # The first window's requests go at once; each further window waits a whole period.
    seconds = max(0, windows - 1) * slots.period_seconds
    return {
        "requests": requests,
        "estimated_seconds": seconds,
        "quota": {"requests": rate.requests, "period_seconds": rate.period_seconds,
                  "backfill_share": share, "backfill_requests": slots.requests},
    }


def request_key(source: str, coin_ids: Sequence[str], since: datetime, until: datetime,
                chunk_days: int) -> str:
    """The identity of a request: the same coins, range and chunk size give the same key."""
    body = json.dumps([source, sorted(set(coin_ids)), since.isoformat(), until.isoformat(),
                       chunk_days])
    return hashlib.sha256(body.encode()).hexdigest()
