"""The HTTP client of the API sources: timeouts, bounded retries with backoff, a shared quota.

Exact JSON parsing lives in shared.sources.exact_json, the quota in shared.sources.rate_limit.
"""
from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import time
from typing import Any, Callable, Iterable, Mapping, TypeVar, cast
from urllib.parse import urlsplit

import requests

from shared.config import RateLimit, Settings
from shared.errors import UpstreamError
from shared.sources.exact_json import BodyError, JsonItem, ShapeError, parse_json_array
from shared.sources.http_errors import RateLimited, UpstreamUnavailable
from shared.sources.rate_limit import RateLimiter, RedisRateLimiter

logger = logging.getLogger("shared.sources.http")

T = TypeVar("T")

# Statuses worth another try: the upstream (or Cloudflare in front of it) is busy or broken.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})

# Event names reported through RunContext.on_event.
EVENT_REQUESTS = "http_requests"
EVENT_RETRIES = "http_retries"
EVENT_WAITS = "rate_limit_waits"
EVENT_WAIT_SECONDS = "rate_limit_wait_seconds"


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


class _Transient(Exception):
    """One failed attempt worth retrying."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        # The upstream's Retry-After (the limiter waits it out; the retry adds only a jitter).
        self.retry_after = retry_after


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
            None if limiter else RedisRateLimiter(settings, source, rate, sleep=sleep)
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
        """Send until an answer classifies as a body; transient failures are retried."""
        where = self._where(url, params)
        attempts = self.max_retries + 1
        failure = _Transient("no attempt made")
        for attempt in range(attempts):
            if attempt:
                self._event(EVENT_RETRIES, 1)
            self._wait_for_slot()
            self._event(EVENT_REQUESTS, 1)
            try:
                return self._classify(self._send(url, params, where), where, parse_body)
            except _Transient as exc:
                failure = exc
            if attempt == attempts - 1:
                break
            # After a Retry-After the limiter already waits; add only a jitter on top.
            delay = (
                random.uniform(0, min(self.backoff_max, self.backoff_base))
                if failure.retry_after is not None
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

    def _send(self, url: str, params: Mapping[str, Any] | None, where: str) -> requests.Response:
        """One GET; a broken exchange raises _Transient, a TLS failure UpstreamError."""
        try:
            return self.session.get(
                url, params=params, timeout=self.timeout, allow_redirects=False
            )
        except requests.Timeout:
            raise _Transient(f"no answer within {self.timeout:g}s") from None
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
            raise _Transient(f"connection broken ({type(exc).__name__})") from None

    def _classify(
        self, response: requests.Response, where: str, parse_body: Callable[[str], T]
    ) -> T:
        """The parsed body of a 2xx; raise _Transient (retry) or UpstreamError (give up)."""
        status = response.status_code
        if 200 <= status < 300:
            try:
                return parse_body(response.content.decode("utf-8"))
            except UnicodeDecodeError:
                raise _Transient("body is not UTF-8", status) from None
            except ShapeError:
                raise UpstreamError(
                    f"{self.source}: unexpected body shape from {where}: "
                    f"{redact(upstream_message(response), self._secrets)}",
                    status,
                ) from None
            except BodyError as exc:
                # Broken caches and cut streams both show up as invalid JSON.
                raise _Transient(str(exc), status) from None
        if 300 <= status < 400:
            target = urlsplit(response.headers.get("Location", "")).netloc or "?"
            raise UpstreamError(
                f"{self.source}: HTTP {status} redirect to {redact(target, self._secrets)} "
                f"for {where}; redirects are not followed",
                status,
            )
        message = redact(upstream_message(response), self._secrets)
        if status not in RETRY_STATUSES:
            hint = " (plan or quota)" if status == 402 else ""
            raise UpstreamError(f"{self.source}: HTTP {status}{hint} for {where}: {message}",
                                status)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is not None:
            self.limiter.block(retry_after)
            if retry_after > self.backoff_max:
                raise RateLimited(
                    f"{self.source}: HTTP {status} for {where}, Retry-After "
                    f"{retry_after:.0f}s exceeds the {self.backoff_max:g}s we wait",
                    retry_after=retry_after,
                    status=status,
                )
        raise _Transient(f"HTTP {status} ({message})", status, retry_after)
