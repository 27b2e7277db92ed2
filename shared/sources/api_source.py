"""What the API sources (CoinGecko, CoinPaprika) share: their settings, client hooks and client."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import requests

from shared.config import RateLimit, Settings
from shared.sources.base import RunContext
from shared.sources.http import HttpClient
from shared.sources.rate_limit import RateLimiter


@dataclass
class ApiSource:
    """Base of the API sources: `limiter`, `session` and `backoff_base` are for tests."""

    # Settings given by the registry win; without them the run's (ctx.settings) are used.
    settings: Settings | None = None
    limiter: RateLimiter | None = None
    session: requests.Session | None = None
    backoff_base: float = 0.5
    # One batch at a time: pages are small and the HTTP quota, not the database, sets the pace.
    read_ahead: ClassVar[bool] = False
    # An API source reads one response at a time: it fails or has read all of it.
    partial_reason: ClassVar[str | None] = None

    def run_settings(self, ctx: RunContext) -> Settings:
        """The settings this run uses."""
        return self.settings or ctx.settings

    def client(
        self, name: str, settings: Settings, ctx: RunContext, rate: RateLimit,
        headers: Mapping[str, str],
    ) -> HttpClient:
        """An HTTP client for one run, counting its requests, retries and waits in `ctx`."""
        return HttpClient(name, settings, rate=rate, headers=headers, on_event=ctx.on_event,
                          limiter=self.limiter, session=self.session,
                          backoff_base=self.backoff_base)
