"""The cluster-wide request quota per source: a moving window in Redis plus a Retry-After block."""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, Protocol, cast

import redis
from limits import RateLimitItem, parse
from limits.strategies import MovingWindowRateLimiter

from shared import redis_client
from shared.config import RateLimit, Settings
from shared.redis_client import RedisTarget
from shared.errors import SourceError
from shared.sources.http_errors import RateLimited

# The client's logger: rate-limit messages have always been logged under it.
logger = logging.getLogger("shared.sources.http")

BLOCKED_KEY = "ratelimit:blocked_until:{source}"
LIMITS_KEY_PREFIX = "ratelimit"
# A quota store that stops answering (a restart; a Sentinel failover, whose replica is promoted
# after down-after-milliseconds and an election) is waited for this long, asked again every
# STORE_RETRY_SECONDS, before the request (and so its run) fails. No slot is ever granted
# without the store (docs/scaling.md).
STORE_OUTAGE_SECONDS = 30.0
STORE_RETRY_SECONDS = 0.5

# Raise the block key only if the new deadline is later: a short Retry-After must never
# shorten a longer one another worker just received.
_BLOCK_SCRIPT = """
local current = tonumber(redis.call('get', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
    redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""


class RateLimiter(Protocol):
    """Grants one request slot at a time for one source, across every process."""

    def acquire(self, max_blocked_wait: float | None = None) -> float:
        """Block until a request may be sent; returns the seconds waited."""
        ...

    def block(self, seconds: float) -> None:
        """Forbid requests to this source for `seconds` (an upstream Retry-After)."""
        ...


class RedisRateLimiter:
    """Moving-window quota per source in Redis (`limits`), plus a shared Retry-After block."""

    def __init__(
        self,
        redis_url: RedisTarget | Settings | str,
        source: str,
        rate: RateLimit,
        *,
        poll_seconds: float = 0.25,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source = source
        self.rate = rate
        self.poll_seconds = poll_seconds
        self._sleep = sleep
        # A plain URL, or the Settings' REDIS_URL (Sentinel too: shared.redis_client).
        self._redis = redis_client.as_target(redis_url)
        self._item: RateLimitItem = parse(rate.as_limits_string())
        self._limiter: MovingWindowRateLimiter | None = None
        self._client: redis.Redis | None = None
        self._block_key = BLOCKED_KEY.format(source=source)

    def _connect(self) -> tuple[MovingWindowRateLimiter, redis.Redis]:
        # Connect lazily: nothing may touch Redis at import or construction time, and a
        # client built before a fork must not be reused by the child.
        if self._limiter is None or self._client is None:
            storage = redis_client.limits_storage(self._redis, LIMITS_KEY_PREFIX)
            self._limiter = MovingWindowRateLimiter(storage)
            self._client = redis_client.client(self._redis)
        return self._limiter, self._client

    def blocked_for(self) -> float:
        """Seconds left before this source may be called again after a Retry-After."""
        _, client = self._connect()
        raw = cast("bytes | None", client.get(self._block_key))
        if raw is None:
            return 0.0
        return max(0.0, float(raw) - time.time())

    def block(self, seconds: float) -> None:
        """Record in Redis that nobody may call this source for `seconds`."""
        if seconds <= 0:
            return
        _, client = self._connect()
        until = time.time() + seconds
        try:
            client.eval(_BLOCK_SCRIPT, 1, self._block_key, repr(until), int(seconds * 1000) + 1000)
        except redis.RedisError as exc:
            raise SourceError(
                f"{self.source}: rate limiter store unavailable ({type(exc).__name__})"
            ) from exc
        logger.warning(
            "%s: upstream asked to wait %.1fs; blocking all workers", self.source, seconds
        )

    def acquire(self, max_blocked_wait: float | None = None) -> float:
        """Wait for the shared block to pass and a quota slot to free; returns seconds waited.

        A store that does not answer is waited for up to STORE_OUTAGE_SECONDS (each new
        connection goes to the master of the moment), then SourceError.
        """
        start = time.monotonic()
        outage_since: float | None = None
        while True:
            try:
                return self._acquire(start, max_blocked_wait, slept=outage_since is not None)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                now = time.monotonic()
                if outage_since is None:
                    outage_since = now
                    logger.warning("%s: rate limiter store unavailable (%s); waiting up to "
                                   "%.0fs for it", self.source, type(exc).__name__,
                                   STORE_OUTAGE_SECONDS)
                if now - outage_since >= STORE_OUTAGE_SECONDS:
                    raise SourceError(f"{self.source}: rate limiter store unavailable for "
                                      f"{STORE_OUTAGE_SECONDS:.0f}s ({type(exc).__name__})"
                                      ) from exc
                self._sleep(STORE_RETRY_SECONDS)
            except redis.RedisError as exc:
                raise SourceError(
                    f"{self.source}: rate limiter store unavailable ({type(exc).__name__})"
                ) from exc

    def _acquire(self, start: float, max_blocked_wait: float | None, slept: bool) -> float:
        """One attempt of acquire(): raises the store's errors as they come."""
        limiter, _ = self._connect()
        while True:
            blocked = self.blocked_for()
            if blocked > 0:
                if max_blocked_wait is not None and blocked > max_blocked_wait:
                    raise RateLimited(
                        f"{self.source}: rate limited by upstream for another "
                        f"{blocked:.0f}s (longer than the {max_blocked_wait:.0f}s we wait)",
                        retry_after=blocked,
                    )
                # A little jitter so that all blocked workers do not fire at the same ms.
                self._sleep(blocked + random.uniform(0, 0.05))
                slept = True
                continue
            if limiter.hit(self._item, self.source):
                # A 429 may have landed while we queued for the slot: honour it too.
                if self.blocked_for() > 0:
                    continue
                # Redis round trips are not waiting; only time spent asleep counts.
                return time.monotonic() - start if slept else 0.0
            stats = limiter.get_window_stats(self._item, self.source)
            wait = min(max(stats.reset_time - time.time(), 0.0), self.poll_seconds)
            self._sleep(wait + random.uniform(0, 0.02))
            slept = True

    def close(self) -> None:
        """Release the Redis connections (they are reopened on next use)."""
        if self._client is not None:
            self._client.close()
        # Only Redis-family storages hold a client to close; others just get dropped.
        storage = self._limiter.storage if self._limiter is not None else None
        get_connection = getattr(storage, "get_connection", None)
        if get_connection is not None:
            get_connection().close()
        self._limiter = None
        self._client = None

    def clear(self) -> None:
        """Forget this source's window and block (tests, operator reset)."""
        limiter, client = self._connect()
        limiter.clear(self._item, self.source)
        client.delete(self._block_key)
