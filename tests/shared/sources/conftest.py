"""Fixtures for source-client tests: a replay upstream, a Redis db of their own, fast Settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest
import redis

from shared.config import Settings, load_settings
from shared.batch.types import Batch
from shared.sources.base import RunContext
from shared.sources.coingecko import CHECKPOINT_KEY, CoinGeckoSource
from tests.conftest import redis_db_url
from tests.upstream import ReplayUpstream

# The index below the session's own (14 without xdist): these tests empty it.
REDIS_URL = redis_db_url(offset=1)


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    """REDIS_URL's db, emptied before and after (rate-limit windows and blocks live there)."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def upstream() -> Iterator[ReplayUpstream]:
    """A fresh replay upstream on a free loopback port."""
    server = ReplayUpstream().start()
    yield server
    server.stop()


def make_settings(upstream: ReplayUpstream, **env: str) -> Settings:
    """Settings pointing at `upstream`, with short timeouts and a generous quota by default."""
    base = {
        "REDIS_URL": REDIS_URL,
        "COINGECKO_BASE_URL": upstream.coingecko_base_url,
        "COINPAPRIKA_BASE_URL": upstream.coinpaprika_base_url,
        "HTTP_TIMEOUT_SECONDS": "1.5",  # short, but not shorter than a loaded 2-core box needs
        "HTTP_MAX_RETRIES": "3",
        "HTTP_BACKOFF_MAX_SECONDS": "3",
        "COINGECKO_RATE_LIMIT": "1000",
        "COINGECKO_RATE_PERIOD_SECONDS": "1",
        "COINPAPRIKA_RATE_LIMIT": "1000",
        "COINPAPRIKA_RATE_PERIOD_SECONDS": "1",
    }
    base.update(env)
    return load_settings(base)


@dataclass
class Events:
    """Counts what a source reports through RunContext.on_event."""

    counts: dict[str, float] = field(default_factory=dict)

    def __call__(self, name: str, amount: float) -> None:
        self.counts[name] = self.counts.get(name, 0) + amount

    def __getitem__(self, name: str) -> float:
        return self.counts.get(name, 0)


def make_ctx(
    settings: Settings,
    source: str,
    run_id: int = 1,
    checkpoints: dict[str, dict[str, Any]] | None = None,
) -> tuple[RunContext, Events]:
    """A RunContext whose events are counted."""
    events = Events()
    ctx = RunContext(
        run_id=run_id, source=source, settings=settings,
        checkpoints=checkpoints or {}, on_event=events,
    )
    return ctx, events


def gecko_batches(
    upstream: ReplayUpstream, body: str | None = None, page: int = 1, **source: Any
) -> list[Batch]:
    """A CoinGecko run's batches from `page` on (resumed there); `body` is served as that page.

    The real path: HTTP through the replay upstream, the client, the source's parsing.
    """
    if body is not None:
        upstream.add_fault("status", endpoint="coingecko", page=page, count=1, status=200,
                           body=body)
    saved = {CHECKPOINT_KEY: {"run_id": 1, "page": page - 1, "complete": False}}
    ctx, _ = make_ctx(make_settings(upstream), "coingecko", run_id=1,
                      checkpoints=saved if page > 1 else None)
    return list(CoinGeckoSource(backoff_base=0.01, **source).batches(ctx))
