"""The transient upstream failures the HTTP client and the rate limiter raise."""
from __future__ import annotations

from shared.errors import UpstreamError


class UpstreamUnavailable(UpstreamError):
    """Transient upstream failures (5xx, 429, timeouts, resets) outlasted our retries."""

    transient = True


class RateLimited(UpstreamUnavailable):
    """The upstream asked us to wait longer than we are willing to block a worker."""

    def __init__(self, message: str, retry_after: float, status: int | None = 429) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after
