"""CoinPaprika tickers coherent with the recorded CoinGecko page (same coins, same moment)."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence


def coingecko_matches(coins: Iterable[Mapping[str, Any]],
                      gecko: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """CoinPaprika id -> recorded CoinGecko item, for the coins both have.

    A CoinPaprika id is `<symbol>-<slug>`; the slug is CoinGecko's id for most coins, else
    symbol and name must name exactly one CoinGecko item. Each item matches once (by rank).
    """
    by_id = {g["id"]: g for g in gecko}
    by_name: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for g in gecko:
        by_name.setdefault((g["symbol"].lower(), g["name"].lower()), []).append(g)
    matches: dict[str, dict[str, Any]] = {}
    taken: set[str] = set()
    for coin in coins:
        symbol = str(coin["symbol"]).lower()
        prefix = symbol + "-"
        slug = coin["id"][len(prefix):] if coin["id"].startswith(prefix) else None
        found = by_id.get(slug) if slug else None
        if found is None or found["symbol"].lower() != symbol:
            candidates = by_name.get((symbol, str(coin["name"]).lower()), [])
            found = candidates[0] if len(candidates) == 1 else None
        if found is not None and found["id"] not in taken:
            taken.add(found["id"])
            matches[coin["id"]] = found
    return matches


# Where the coherent tickers' synthetic coins are dated: just before the recorded page's fetch.
COHERENT_BASE_TIME = datetime(2025, 2, 9, 17, 40, tzinfo=timezone.utc)


def coherent_ticker(ticker: dict[str, Any], gecko: Mapping[str, Any] | None) -> dict[str, Any]:
    """A synthetic ticker moved to the recorded CoinGecko page's time and, if known, its numbers.

    Prices and market caps stay within 0.2% of CoinGecko's, times within 4 minutes before
    its last_updated: what two aggregators show for the same coin at the same moment.
    """
    rng = random.Random(f"coinpaprika-coherent:{ticker['id']}")
    usd = ticker["quotes"]["USD"]
    lag = timedelta(seconds=rng.randint(0, 240))
    if gecko is None:
        ticker["last_updated"] = (COHERENT_BASE_TIME - lag).strftime("%Y-%m-%dT%H:%M:%SZ")
        return ticker
    seen = datetime.fromisoformat(gecko["last_updated"].replace("Z", "+00:00"))
    ticker["last_updated"] = (seen - lag).strftime("%Y-%m-%dT%H:%M:%SZ")
    skew = 1 + rng.uniform(-0.002, 0.002)
    if gecko.get("current_price") is not None:
        usd["price"] = float(f"{gecko['current_price'] * skew:.12g}")
    if gecko.get("market_cap"):
        usd["market_cap"] = int(gecko["market_cap"] * skew)
    if gecko.get("total_volume"):
        usd["volume_24h"] = round(gecko["total_volume"] * rng.uniform(0.85, 1.15), 1)
    for field_name in ("circulating_supply", "total_supply"):
        if gecko.get(field_name):
            ticker[field_name] = int(gecko[field_name])
    if gecko.get("max_supply"):
        ticker["max_supply"] = int(gecko["max_supply"])
    if usd.get("ath_price"):
        usd["ath_price"] = float(f"{usd['price'] * rng.uniform(1, 3):.12g}")
        usd["percent_from_price_ath"] = round((usd["price"] / usd["ath_price"] - 1) * 100, 2)
    return ticker
