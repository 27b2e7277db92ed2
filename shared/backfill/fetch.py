"""One backfill chunk's request: CoinGecko market_chart/range under a share of the quota."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable

from shared.backfill.plan import backfill_share
from shared.config import Settings
from shared.batch.types import Batch, ParsedQuote, RawItem, content_hash
from shared.sources.coingecko import SOURCE, auth_headers
from shared.sources.exact_json import BodyError, ShapeError
from shared.sources.http import HttpClient
from shared.sources.rate_limit import RedisRateLimiter

SERIES = ("prices", "market_caps", "total_volumes")


class ShareLimiter:
    """Two quotas in turn: the backfill's share first, then the source's whole quota.

    Every backfill request takes a slot of both, so backfills together never use more than
    BACKFILL_QUOTA_SHARE of a window and scheduled runs keep the rest; a Retry-After blocks
    the source for everybody, scheduled runs included, as it should.
    """

    def __init__(self, settings: Settings) -> None:
        rate = settings.coingecko_rate
        self.share = RedisRateLimiter(settings, f"{SOURCE}-backfill",
                                      backfill_share(rate, settings.backfill_quota_share))
        self.main = RedisRateLimiter(settings, SOURCE, rate)

    def acquire(self, max_blocked_wait: float | None = None) -> float:
        """Wait for a backfill slot, then for a slot of the source's quota."""
        return (self.share.acquire(max_blocked_wait)
                + self.main.acquire(max_blocked_wait))

    def block(self, seconds: float) -> None:
        """An upstream Retry-After: the whole source waits."""
        self.main.block(seconds)

    def close(self) -> None:
        """Release both limiters' connections."""
        self.share.close()
        self.main.close()


def _object_text(body: str) -> str:
    """The body if it is a JSON object holding the three series, else ShapeError/BodyError."""
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise BodyError(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(value.get(k), list) for k in SERIES):
        raise ShapeError("expected an object with prices, market_caps and total_volumes")
    return body


class ChartClient(HttpClient):
    """The sources' HTTP client (retries, Retry-After, quota) for one JSON object body."""

    def get_object_text(self, url: str, params: dict[str, Any]) -> str:
        """GET `url`; the exact body text of a market_chart answer."""
        return self._fetch(url, params, _object_text)


def make_client(settings: Settings, limiter: ShareLimiter,
                on_event: Callable[[str, float], None] | None = None) -> ChartClient:
    """A client for backfill requests, counting requests and waits through `on_event`."""
    return ChartClient(SOURCE, settings, rate=settings.coingecko_rate,
                       headers=auth_headers(settings), on_event=on_event, limiter=limiter)


def fetch_window(client: ChartClient, settings: Settings, coin_id: str, start: datetime,
                 end: datetime) -> str:
    """The market_chart/range body for one coin and window (both ends inclusive)."""
    url = f"{settings.coingecko_base_url}/coins/{coin_id}/market_chart/range"
    return client.get_object_text(url, {"vs_currency": "usd",
                                        "from": int(start.timestamp()),
                                        "to": int(end.timestamp())})


def _series(value: dict[str, Any], name: str) -> dict[int, Decimal | None]:
    out: dict[int, Decimal | None] = {}
    for pair in value.get(name) or []:
        if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], Decimal):
            number = pair[1]
            out[int(pair[0])] = number if isinstance(number, Decimal) else None
    return out


def chunk_batch(coin: dict[str, str], chunk_id: int, backfill_id: int, body: str,
                start: datetime, end: datetime) -> Batch:
    """The chunk's raw payload and its quotes as one Batch (checkpoint: the chunk is done).

    Points outside the window are dropped (a window's ends are its own, so adjacent chunks
    never write the same point twice); a point without a price is not a quote.
    """
    value = json.loads(body, parse_float=Decimal, parse_int=Decimal)
    raw_hash = content_hash(SOURCE, body)
    key = f"market_chart:{coin['id']}:{int(start.timestamp())}-{int(end.timestamp())}"
    batch = Batch(checkpoint_key=f"backfill:{backfill_id}:{chunk_id}",
                  checkpoint={"backfill_id": backfill_id, "chunk_id": chunk_id,
                              "done": True})
    batch.raw.append(RawItem(source_key=key, payload=body, hash=raw_hash))
    prices, caps, volumes = (_series(value, name) for name in SERIES)
    low, high = start.timestamp() * 1000, end.timestamp() * 1000
    for ms, price in sorted(prices.items()):
        if price is None or not low <= ms <= high:
            continue
        batch.quotes.append(ParsedQuote(
            source_asset_id=coin["id"], symbol=coin["symbol"], name=coin.get("name"),
            observed_at=datetime.fromtimestamp(ms / 1000, tz=timezone.utc), raw_hash=raw_hash,
            price_usd=price, market_cap_usd=caps.get(ms), volume_24h_usd=volumes.get(ms)))
    return batch
