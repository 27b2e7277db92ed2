"""The stored form of flags rebuilds exactly what the checks found; CSV blocks' jumps likewise."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from shared.batch.types import ParsedQuote
from shared.quality.checks import JUMP, QualityThresholds, check_batch, check_columns
from shared.quality.compact import KIND_BITS, FlagSet, block_jumps, compact, rebuild

UTC = timezone.utc
T = QualityThresholds()
DAY0 = datetime(2021, 1, 1, 23, 59, 59, tzinfo=UTC)


def _stamps(days: list[int]) -> list[str]:
    return [(DAY0 + timedelta(days=d)).isoformat() for d in days]


def _reference(stamps: list[str], prices: list[float], previous: tuple[str, float] | None
               ) -> dict[int, tuple[str, float]]:
    """check_columns' jumps over one key: row -> (previous time, previous price)."""
    found = check_columns("csv", [1] * len(prices), stamps, prices, T,
                          previous={1: previous} if previous else None)
    assert all(len(flags) == 1 and flags[0]["flag"] == JUMP for flags in found.values())
    return {row: (flags[0]["evidence"]["previous_observed_at"],
                  flags[0]["evidence"]["previous_price_usd"]) for row, flags in found.items()}


def test_block_jumps_find_what_check_columns_finds_on_any_block() -> None:
    rng = random.Random(23)
    for case in range(3000):
        count = rng.randint(1, 12)
        days = sorted(rng.sample(range(40), count))
        if case % 4 == 1:
            rng.shuffle(days)  # out of time order
        if case % 4 == 2 and count > 2:
            days[1] = days[0]  # a repeated time
        prices = [rng.choice((0.0, 0.05, 1.0, 1.5, 20.0, 300.0, 3.0)) if case % 3 == 0
                  else rng.uniform(0.5, 2.0) * (100 if rng.random() < 0.2 else 1)
                  for _ in range(count)]
        stamps = _stamps(days)
        previous = None
        if case % 2:
            previous = (_stamps([rng.randint(-5, 3)])[0], rng.choice((0.01, 1.0, 0.0)))
        expected = _reference(stamps, prices, previous)
        rows, bases = block_jumps(stamps, prices, T.jump_factor, previous)
        got = {row: ((previous[0], previous[1]) if base < 0 and previous
                     else (stamps[base], prices[base])) for row, base in zip(rows, bases)}
        assert len(got) == len(rows)
        assert got == expected, (stamps, prices, previous)


def _quote(coin: str, at: datetime, price: str, mcap: str | None = None,
           volume: str | None = None, supply: str | None = None) -> ParsedQuote:
    return ParsedQuote(coin, coin.upper(), coin, at, b"h", price_usd=Decimal(price),
                       market_cap_usd=None if mcap is None else Decimal(mcap),
                       volume_24h_usd=None if volume is None else Decimal(volume),
                       circulating_supply=None if supply is None else Decimal(supply))


def test_api_flags_rebuild_from_their_stored_form() -> None:
    """Implausible, stale and jump flags of API quotes, alone and together, rebuild exactly."""
    at = datetime(2025, 2, 9, 17, 44, 7, 125000, tzinfo=UTC)
    quotes = [
        _quote("ticoex", at, "5.5", mcap="3333370870735.0", volume="5.4"),
        _quote("slip", at - timedelta(seconds=3), "1.0", mcap="10000", volume="100",
               supply="1000"),
        _quote("late", at - timedelta(days=12, seconds=5), "1.0"),
        _quote("jumpy", at - timedelta(seconds=1), "250.0"),
        _quote("both", at - timedelta(hours=3), "-4", mcap="20000000000000", volume="1"),
        _quote("clean", at, "2.0", mcap="2000", volume="100"),
    ]
    previous = {"jumpy": (at - timedelta(minutes=5), 2.5), "late": (at - timedelta(days=13), 1.1)}
    found = check_batch("coingecko", quotes, at, T, previous=previous)
    assert set(found) == {0, 1, 2, 3, 4}
    kinds = {i: [f["flag"] for f in flags] for i, flags in found.items()}
    assert kinds[4] == ["implausible"] * 3 + ["stale"] and kinds[3] == ["jump"]
    for i, flags in found.items():
        q = quotes[i]
        stored = compact(q.observed_at, flags)
        assert stored is not None
        fset = FlagSet(1, "coingecko", stored[0], at, T)
        values = [None if v is None else float(v) for v in (
            q.price_usd, q.market_cap_usd, q.volume_24h_usd, q.circulating_supply)]
        assert rebuild(fset, q.observed_at, *values, stored[1], stored[2]) == flags
    assert compact(at, [{"flag": "outlier", "reason": "x", "evidence": {}}]) is None
    assert KIND_BITS == {"implausible": 1, "stale": 2, "jump": 4}
