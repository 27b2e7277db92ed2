"""HTTP plumbing shared by the API sources: retries, cluster-wide rate limit, exact JSON numbers."""
from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping, Protocol, TypeVar, cast
from urllib.parse import urlsplit

import redis
import requests
from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from shared.config import RateLimit, Settings
from shared.errors import SourceError, UpstreamError
from shared.parsing import parse_decimal, parse_int, parse_timestamp

logger = logging.getLogger("shared.sources.http")

T = TypeVar("T")

# Statuses worth another try: the upstream (or Cloudflare in front of it) is busy or broken.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
BLOCKED_KEY = "ratelimit:blocked_until:{source}"
LIMITS_KEY_PREFIX = "ratelimit"

# Event names reported through RunContext.on_event.
EVENT_REQUESTS = "http_requests"
EVENT_RETRIES = "http_retries"
EVENT_WAITS = "rate_limit_waits"
EVENT_WAIT_SECONDS = "rate_limit_wait_seconds"

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


class UpstreamUnavailable(UpstreamError):
    """Transient upstream failures (5xx, 429, timeouts, resets) outlasted our retries."""

    transient = True


class RateLimited(UpstreamUnavailable):
    """The upstream asked us to wait longer than we are willing to block a worker."""

    def __init__(self, message: str, retry_after: float, status: int | None = 429) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


# -- exact JSON -------------------------------------------------------------------------------


def _no_constant(name: str) -> None:
    # NaN/Infinity are not JSON; an upstream sending them has no usable value there.
    return None


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_int=Decimal, parse_constant=_no_constant)


@dataclass(frozen=True, slots=True)
class JsonItem:
    """One element of a JSON array: its exact text and its value (numbers as Decimal)."""

    text: str
    value: Any


class BodyError(ValueError):
    """A response body that is not valid JSON (possibly cut or corrupted on the way)."""


class ShapeError(BodyError):
    """Valid JSON, but not the shape asked for (e.g. an object where an array belongs)."""


def parse_json(text: str) -> Any:
    """Parse JSON with every number as the Decimal of its exact text (exponent form kept)."""
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise BodyError(f"invalid JSON at char {exc.pos}: {exc.msg}") from exc


def parse_json_array(text: str) -> list[JsonItem]:
    """Split a top-level JSON array into items, keeping each item's exact source text."""
    ws = " \t\r\n"
    pos = 0
    length = len(text)
    while pos < length and text[pos] in ws:
        pos += 1
    if pos >= length or text[pos] != "[":
        kind = type(parse_json(text)).__name__  # raises BodyError when not JSON at all
        raise ShapeError(f"expected a JSON array, got {kind}")
    pos += 1
    items: list[JsonItem] = []
    expect_item = True
    while True:
        while pos < length and text[pos] in ws:
            pos += 1
        if pos >= length:
            raise BodyError(f"invalid JSON at char {pos}: unterminated array")
        if text[pos] == "]" and (not items or not expect_item):
            pos += 1
            break
        if not expect_item:
            raise BodyError(f"invalid JSON at char {pos}: expected ',' or ']'")
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise BodyError(f"invalid JSON at char {exc.pos}: {exc.msg}") from exc
        items.append(JsonItem(text[pos:end], value))
        pos = end
        while pos < length and text[pos] in ws:
            pos += 1
        if pos < length and text[pos] == ",":
            pos += 1
            expect_item = True
        else:
            expect_item = False
    if text[pos:].strip(ws):
        raise BodyError(f"invalid JSON at char {pos}: extra data after the array")
    return items


def to_decimal(value: Any) -> Decimal | None:
    """A JSON value as an exact Decimal: null and "" are None; numeric strings are accepted."""
    if isinstance(value, Decimal) and not value.is_finite():
        return None  # only NaN/Infinity constants get here, and they carry no value
    # JSON has no thousands separators: "1,5" must be an error, not 15.
    return parse_decimal(value, thousands_sep=None)


def to_int(value: Any) -> int | None:
    """A JSON value as an int (ranks); non-integral numbers are an error."""
    return parse_int(value)


def to_datetime(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as an aware UTC datetime; null/"" are None; garbage is an error."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {type(value).__name__}")
    return parse_timestamp(value)


# -- small helpers ----------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After in seconds from delta-seconds or an HTTP date; None when absent or garbled."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced, so upstream echoes of a key never leak."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def upstream_message(response: requests.Response, limit: int = 200) -> str:
    """The error text an upstream put in its body (`{"error": ...}` or CoinGecko's status)."""
    content_type = response.headers.get("Content-Type", "")
    body = response.content[:4096].decode("utf-8", "replace")
    if "html" in content_type or body.lstrip().startswith("<"):
        return "HTML error page"
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:limit]
    if isinstance(data, dict):
        status = data.get("status")
        if isinstance(status, dict) and status.get("error_message"):
            return str(status["error_message"])[:limit]
        for key in ("error", "message", "error_message"):
            if data.get(key):
                return str(data[key])[:limit]
    return body.strip()[:limit]


# -- rate limiting ----------------------------------------------------------------------------


class RateLimiter(Protocol):
    """Grants one request slot at a time for one source, across every process."""

    def acquire(self, max_blocked_wait: float | None = None) -> float:
        """Block until a request may be sent; returns the seconds waited."""
        ...

    def block(self, seconds: float) -> None:
        """Forbid requests to this source for `seconds` (an upstream Retry-After)."""
        ...


class NullRateLimiter:
    """A limiter that never waits (unit tests, one-off scripts)."""

    def acquire(self, max_blocked_wait: float | None = None) -> float:
        """Never waits."""
        return 0.0

    def block(self, seconds: float) -> None:
        """Ignores blocks."""


class RedisRateLimiter:
    """Moving-window quota per source in Redis (`limits`), plus a shared Retry-After block."""

    def __init__(
        self,
        redis_url: str,
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
        self._redis_url = redis_url
        self._item: RateLimitItem = parse(rate.as_limits_string())
        self._limiter: MovingWindowRateLimiter | None = None
        self._redis: redis.Redis | None = None
        self._block_key = BLOCKED_KEY.format(source=source)

    def _connect(self) -> tuple[MovingWindowRateLimiter, redis.Redis]:
        # Connect lazily: nothing may touch Redis at import or construction time, and a
        # client built before a fork must not be reused by the child.
        if self._limiter is None or self._redis is None:
            storage = storage_from_string(self._redis_url, key_prefix=LIMITS_KEY_PREFIX)
            self._limiter = MovingWindowRateLimiter(storage)
            self._redis = redis.Redis.from_url(self._redis_url)
        return self._limiter, self._redis

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
        """Wait for the shared block to pass and a quota slot to free; returns seconds waited."""
        start = time.monotonic()
        slept = False
        try:
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
        except redis.RedisError as exc:
            raise SourceError(
                f"{self.source}: rate limiter store unavailable ({type(exc).__name__})"
            ) from exc

    def close(self) -> None:
        """Release the Redis connections (they are reopened on next use)."""
        if self._redis is not None:
            self._redis.close()
        # Only Redis-family storages hold a client to close; others just get dropped.
        storage = self._limiter.storage if self._limiter is not None else None
        get_connection = getattr(storage, "get_connection", None)
        if get_connection is not None:
            get_connection().close()
        self._limiter = None
        self._redis = None

    def clear(self) -> None:
        """Forget this source's window and block (tests, operator reset)."""
        limiter, client = self._connect()
        limiter.clear(self._item, self.source)
        client.delete(self._block_key)


# -- the client -------------------------------------------------------------------------------


class _Transient(Exception):
    """One failed attempt worth retrying."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class HttpClient:
    """GETs with timeouts, bounded retries (full-jitter backoff, Retry-After) and a shared quota."""

    def __init__(
        self,
        source: str,
        settings: Settings,
        *,
        rate: RateLimit,
        headers: Mapping[str, str] | None = None,
        on_event: Callable[[str, float], None] | None = None,
        limiter: RateLimiter | None = None,
        session: requests.Session | None = None,
        backoff_base: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source = source
        self.timeout = settings.http_timeout_seconds
        self.max_retries = settings.http_max_retries
        self.backoff_max = settings.http_backoff_max_seconds
        self.backoff_base = backoff_base
        self._sleep = sleep
        self._on_event = on_event or (lambda name, amount: None)
        self._own_limiter = (
            None if limiter else RedisRateLimiter(settings.redis_url, source, rate, sleep=sleep)
        )
        self.limiter: RateLimiter = limiter or cast(RedisRateLimiter, self._own_limiter)
        # Anything that could be a credential is scrubbed from every message we build.
        self._secrets = tuple(settings.redacted_secrets()) + tuple(
            v for v in (headers or {}).values() if v
        )
        self.session = session or requests.Session()
        self.session.headers.update({"Accept": "application/json", **(headers or {})})

    def close(self) -> None:
        """Close pooled HTTP and Redis connections."""
        self.session.close()
        if self._own_limiter is not None:
            self._own_limiter.close()

    def __enter__(self) -> "HttpClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_json(self, url: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET `url` and parse the body as JSON (numbers as exact Decimals)."""
        return self._fetch(url, params, parse_json)

    def get_json_array(self, url: str, params: Mapping[str, Any] | None = None) -> list[JsonItem]:
        """GET `url` whose body must be a JSON array; items keep their exact text."""
        return self._fetch(url, params, parse_json_array)

    # -- internals ----------------------------------------------------------------------------

    def _event(self, name: str, amount: float) -> None:
        self._on_event(name, amount)

    def _where(self, url: str, params: Mapping[str, Any] | None) -> str:
        """A short description of the request for messages (path and query, never headers)."""
        path = urlsplit(url).path
        if params:
            path += "?" + "&".join(f"{k}={v}" for k, v in params.items())
        return redact(path, self._secrets)

    def _backoff(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**retry)] (AWS architecture blog)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** retry))
        return random.uniform(0, max(ceiling, 0.0))

    def _wait_for_slot(self) -> None:
        waited = self.limiter.acquire(max_blocked_wait=self.backoff_max)
        if waited > 0:
            self._event(EVENT_WAITS, 1)
            self._event(EVENT_WAIT_SECONDS, waited)
            logger.info("%s: waited %.2fs for a rate-limit slot", self.source, waited)

    def _fetch(
        self, url: str, params: Mapping[str, Any] | None, parse_body: Callable[[str], T]
    ) -> T:
        where = self._where(url, params)
        attempts = self.max_retries + 1
        failure = _Transient("no attempt made")
        for attempt in range(attempts):
            if attempt:
                self._event(EVENT_RETRIES, 1)
            self._wait_for_slot()
            self._event(EVENT_REQUESTS, 1)
            retry_after: float | None = None
            try:
                response = self.session.get(
                    url, params=params, timeout=self.timeout, allow_redirects=False
                )
            except requests.Timeout:
                failure = _Transient(f"no answer within {self.timeout:g}s")
            except requests.exceptions.SSLError as exc:
                raise UpstreamError(
                    f"{self.source}: TLS error for {where}: {redact(str(exc), self._secrets)[:200]}"
                ) from None
            except (
                requests.ConnectionError,
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
            ) as exc:
                # Resets and bodies shorter than their Content-Length land here.
                failure = _Transient(f"connection broken ({type(exc).__name__})")
            else:
                status = response.status_code
                if 200 <= status < 300:
                    try:
                        return parse_body(response.content.decode("utf-8"))
                    except UnicodeDecodeError:
                        failure = _Transient("body is not UTF-8", status)
                    except ShapeError:
                        raise UpstreamError(
                            f"{self.source}: unexpected body shape from {where}: "
                            f"{redact(upstream_message(response), self._secrets)}",
                            status,
                        ) from None
                    except BodyError as exc:
                        # Broken caches and cut streams both show up as invalid JSON.
                        failure = _Transient(str(exc), status)
                elif 300 <= status < 400:
                    target = urlsplit(response.headers.get("Location", "")).netloc or "?"
                    raise UpstreamError(
                        f"{self.source}: HTTP {status} redirect to {redact(target, self._secrets)} "
                        f"for {where}; redirects are not followed",
                        status,
                    )
                elif status in RETRY_STATUSES:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    message = redact(upstream_message(response), self._secrets)
                    failure = _Transient(f"HTTP {status} ({message})", status)
                    if retry_after is not None:
                        self.limiter.block(retry_after)
                        if retry_after > self.backoff_max:
                            raise RateLimited(
                                f"{self.source}: HTTP {status} for {where}, Retry-After "
                                f"{retry_after:.0f}s exceeds the {self.backoff_max:g}s we wait",
                                retry_after=retry_after,
                                status=status,
                            )
                else:
                    message = redact(upstream_message(response), self._secrets)
                    hint = " (plan or quota)" if status == 402 else ""
                    raise UpstreamError(
                        f"{self.source}: HTTP {status}{hint} for {where}: {message}", status
                    )
            if attempt == attempts - 1:
                break
            # After a Retry-After the limiter already waits; add only a jitter on top.
            delay = (
                random.uniform(0, min(self.backoff_max, self.backoff_base))
                if retry_after is not None
                else self._backoff(attempt)
            )
            logger.warning(
                "%s: %s for %s; retry %d/%d in %.2fs",
                self.source, failure.message, where, attempt + 1, self.max_retries, delay,
            )
            self._sleep(delay)
        raise UpstreamUnavailable(
            f"{self.source}: giving up on {where} after {attempts} attempt(s): {failure.message}",
            failure.status,
        )
