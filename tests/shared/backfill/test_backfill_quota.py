"""The backfill's share of the quota on real Redis: scheduled runs keep the rest of the window."""
from __future__ import annotations

import time
from dataclasses import replace

from shared.backfill.fetch import ShareLimiter
from shared.config import RateLimit, Settings


def test_a_saturating_backfill_leaves_the_rest_of_the_window_to_scheduled_runs(
    settings: Settings,
) -> None:
    settings = replace(settings, coingecko_rate=RateLimit(4, 2), backfill_quota_share=0.5)
    limiter = ShareLimiter(settings)
    limiter.share.clear()
    limiter.main.clear()
    try:
        # The backfill's two slots of the window go at once ...
        assert limiter.acquire() == 0.0 and limiter.acquire() == 0.0
        # ... then a scheduled run (the source's own limiter) still gets the other two now.
        assert limiter.main.acquire() == 0.0 and limiter.main.acquire() == 0.0
        # The backfill's third request waits for the next window, not the scheduled run.
        started = time.monotonic()
        limiter.acquire()
        assert time.monotonic() - started >= 1.5
    finally:
        limiter.share.clear()
        limiter.main.clear()
        limiter.close()


def test_a_retry_after_blocks_the_whole_source(settings: Settings) -> None:
    limiter = ShareLimiter(settings)
    try:
        limiter.block(5)
        assert limiter.main.blocked_for() > 4
    finally:
        limiter.main.clear()
        limiter.close()
