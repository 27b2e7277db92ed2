"""Replay of CoinGecko `/coins/{id}/market_chart/range`, built from recorded Bitcoin history.

Values are real: each UTC day maps onto a day of the Kaggle Bitcoin file (cyclically, since the
file ends in 2021), finer points interpolate linearly between two recorded closes, and other
recorded coins are Bitcoin scaled by their price ratio on the recorded markets page.
Granularity follows CoinGecko's documented rules for the range: 5-minute points up to 1 day,
hourly up to 90 days, daily beyond.
"""
from __future__ import annotations

import csv
import json
import math
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parent.parent.parent
BITCOIN_CSV = ROOT / "data" / "kaggle_srk_coin_Bitcoin.csv"
DAY = 86_400
FIVE_MINUTES, HOUR = 300, 3_600


def granularity_seconds(span_seconds: float) -> int:
    """CoinGecko's point spacing for a range of this length."""
    if span_seconds <= DAY:
        return FIVE_MINUTES
    if span_seconds <= 90 * DAY:
        return HOUR
    return DAY


@lru_cache(maxsize=1)
def bitcoin_days() -> tuple[tuple[float, float, float], ...]:
    """(close, market cap, volume) per recorded day, in file order."""
    with BITCOIN_CSV.open(newline="", encoding="utf-8") as handle:
        return tuple((float(r["Close"]), float(r["Marketcap"]), float(r["Volume"]))
                     for r in csv.DictReader(handle))


def coin_scales(items: tuple[str, ...] | list[str]) -> dict[str, float]:
    """Coin id -> price ratio to Bitcoin on the recorded markets page (coins with a price)."""
    prices: dict[str, float] = {}
    for text in items:
        item = json.loads(text, parse_float=Decimal)
        if item.get("current_price") is not None:
            prices[str(item["id"])] = float(item["current_price"])
    btc = prices.get("bitcoin")
    if not btc:
        return {}
    return {coin: price / btc for coin, price in prices.items() if price > 0}


def _point(t: int, scale: float) -> tuple[float, float, float]:
    days = bitcoin_days()
    day, offset = divmod(t, DAY)
    a, b = days[day % len(days)], days[(day + 1) % len(days)]
    w = offset / DAY
    return tuple(scale * (x + (y - x) * w) for x, y in zip(a, b))  # type: ignore[return-value]


def _num(value: float) -> str:
    return format(value, ".12g") if value else "0"


def market_chart_range(coin_id: str, query: Mapping[str, str],
                       scales: Mapping[str, float]) -> tuple[int, str]:
    """(status, body) of a market_chart/range request, in CoinGecko's shape."""
    if (query.get("vs_currency") or "").lower() != "usd":
        return 400, '{"error":"invalid vs_currency"}'
    try:
        start, end = float(query["from"]), float(query["to"])
    except (KeyError, ValueError):
        return 400, '{"error":"invalid from or to"}'
    if coin_id not in scales:
        return 404, '{"error":"coin not found"}'
    if end < start:
        return 200, '{"prices":[],"market_caps":[],"total_volumes":[]}'
    step = granularity_seconds(end - start)
    first = math.ceil(start / step) * step
    prices, caps, volumes = [], [], []
    for t in range(int(first), int(end) + 1, step):
        price, cap, volume = _point(t, scales[coin_id])
        ms = t * 1000
        prices.append(f"[{ms},{_num(price)}]")
        caps.append(f"[{ms},{_num(cap)}]")
        volumes.append(f"[{ms},{_num(volume)}]")
    return 200, ('{"prices":[' + ",".join(prices) + '],"market_caps":[' + ",".join(caps)
                 + '],"total_volumes":[' + ",".join(volumes) + "]}")
