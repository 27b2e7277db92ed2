"""Backfill planning: CoinGecko's granularity rules, chunk windows, the dry run's cost."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from shared.backfill.plan import (
    DAY,
    estimate,
    granularity_seconds,
    plan_windows,
    request_key,
)
from shared.config import RateLimit

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def test_granularity_follows_coingecko_rules_at_the_edges() -> None:
    assert granularity_seconds(3600) == 300
    assert granularity_seconds(DAY) == 300
    assert granularity_seconds(DAY + 1) == 3600
    assert granularity_seconds(90 * DAY) == 3600
    assert granularity_seconds(90 * DAY + 1) == DAY


def test_400_days_in_90_day_chunks_is_five_hourly_windows_without_gap_or_overlap() -> None:
    until = T0 + timedelta(days=400)
    windows = plan_windows(T0, until, 90)
    assert len(windows) == 5
    assert windows[0].start == T0 and windows[-1].end == until
    for before, after in zip(windows, windows[1:]):
        assert after.start == before.end + timedelta(seconds=1)
    assert all(w.end - w.start <= timedelta(days=90) for w in windows)
    assert [w.granularity for w in windows] == [3600] * 5


def test_chunk_size_chooses_the_granularity() -> None:
    daily = plan_windows(T0, T0 + timedelta(days=365), 365)
    assert len(daily) == 1 and daily[0].granularity == DAY
    five_minutes = plan_windows(T0, T0 + timedelta(days=2), 1)
    assert [w.granularity for w in five_minutes] == [300, 300]
    assert plan_windows(T0, T0, 90) == []


def test_dry_run_estimate_uses_the_backfill_share_of_the_quota() -> None:
    # 30 per minute at half share: 15 requests a minute, so 40 requests take 3 windows.
    cost = estimate(40, RateLimit(30, 60), 0.5)
    assert cost["requests"] == 40
    assert cost["quota"]["backfill_requests"] == 15
    assert cost["estimated_seconds"] == 120
    assert estimate(15, RateLimit(30, 60), 0.5)["estimated_seconds"] == 0
    assert estimate(0, RateLimit(30, 60), 0.5)["estimated_seconds"] == 0
    # A tiny share still gets one request per window.
    assert estimate(3, RateLimit(1, 10), 0.1)["estimated_seconds"] == 20


def test_request_key_ignores_coin_order_and_repeats() -> None:
    until = T0 + timedelta(days=10)
    assert request_key("coingecko", ["b", "a"], T0, until, 90) == request_key(
        "coingecko", ["a", "b", "a"], T0, until, 90)
    assert request_key("coingecko", ["a"], T0, until, 90) != request_key(
        "coingecko", ["a"], T0, until, 30)
