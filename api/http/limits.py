"""Request rate limits: fixed windows counted in Redis, keyed by client address.

Three quotas per client, each a fixed window, configured by API_READ_RATE_LIMIT,
API_JOBS_RATE_LIMIT and API_AUTH_FAIL_RATE_LIMIT (shared.config):
- reads: every GET/HEAD/OPTIONS of the blueprints api/app.py counts (RESOURCES), health (its
  database, broker and worker checks) and metrics included; only /health/live (no I/O, the
  liveness probe) is exempt;
- jobs: POST /jobs and /backfills with a valid token, counted after authentication
  (api.http.auth);
- auth failures: requests refused for a missing or wrong token. They never use up the
  operator's job quota; once a client has used up this one, every write of that client is a
  429 before its token is even compared, so guessing stays slow.

This used flask-limiter; measured on GET /data (bench case 4), its per-request bookkeeping
(resolving limits per endpoint, three Redis round trips for the hit and the X-RateLimit-*
headers) cost more than the rest of a cached answer, and ~100 us even on endpoints with no
limit. Here a request that has a quota costs one Redis
round trip (a script that counts and returns the window's TTL), and any other request one
dictionary lookup.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import redis
from flask import Blueprint, Flask, Response, g, request
from limits import parse as parse_limit
from werkzeug.exceptions import TooManyRequests

from shared import redis_client
from shared.redis_client import RedisTarget

READ_METHODS = ("GET", "HEAD", "OPTIONS")
# Endpoints never counted: the liveness probe must answer whatever a client does.
EXEMPT_ENDPOINTS = frozenset({"health.Live"})

log = logging.getLogger(__name__)

# Count the hit; the first hit of a window starts its expiry (a fixed window, as limits' and
# flask-limiter's "fixed-window"); return the count and the seconds left in the window.
_HIT_SCRIPT = """
local current = redis.call("incrby", KEYS[1], ARGV[2])
if tonumber(current) == tonumber(ARGV[2]) then
    redis.call("expire", KEYS[1], ARGV[1])
end
local ttl = redis.call("ttl", KEYS[1])
if ttl < 0 then
    redis.call("expire", KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
end
return {current, ttl}
"""


@dataclass(frozen=True)
class Quota:
    """`amount` requests per `seconds`-long window."""

    amount: int
    seconds: int
    text: str

    @classmethod
    def parse(cls, value: str) -> Quota:
        """'600/minute', '10 per minute', '100/2 hours' (limits' notation) -> Quota."""
        item = parse_limit(value)  # ValueError on anything else
        return cls(item.amount, item.get_expiry(), str(item))


def ratelimit_defaults(app: Flask, redis_url: str) -> None:
    """Default RATELIMIT_* config (test_config, applied before, wins)."""
    app.config.setdefault("RATELIMIT_ENABLED", True)
    app.config.setdefault("RATELIMIT_STORAGE_URI", redis_url)
    app.config.setdefault("RATELIMIT_STORAGE_OPTIONS",
                          {"socket_connect_timeout": 1, "socket_timeout": 1})
    # Tests build many apps in one process: each gets its own counters unless told otherwise.
    app.config.setdefault(
        "RATELIMIT_KEY_PREFIX",
        f"kasparro-test-{uuid.uuid4().hex[:8]}" if app.config.get("TESTING") else "kasparro")
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    # A Redis outage must not turn reads into 500s (health reports the broker instead).
    app.config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    settings = app.config["SETTINGS"]
    app.config.setdefault("RATELIMIT_JOBS", settings.api_jobs_rate_limit)
    app.config.setdefault("RATELIMIT_READS", settings.api_read_rate_limit)
    app.config.setdefault("RATELIMIT_AUTH_FAIL", settings.api_auth_fail_rate_limit)


class _HitScript(threading.local):
    """Per thread: one Redis connection that runs the hit script.

    A bare redis-py Connection: the client's pool, retry and command layers cost ~60 us of
    the ~90 us a call took (measured), on every limited request. A connection that fails
    after it worked (Redis restarted, or a Sentinel failover: a demoted master's READONLY
    comes as a ConnectionError) is replaced once, by one to the master of the moment; EVAL
    loads the script after a restart emptied Redis' script cache.
    """

    def __init__(self, where: RedisTarget, options: dict[str, Any]) -> None:
        pool = redis_client.connection_pool(where, **options)
        self.make: Callable[[], Any] = lambda: pool.connection_class(**pool.connection_kwargs)
        self.sha = hashlib.sha1(_HIT_SCRIPT.encode()).hexdigest()
        self.connection: Any = None
        self.pid = 0

    def __call__(self, key: str, seconds: int, amount: int = 1) -> tuple[int, int]:
        for attempt in (1, 2):
            fresh = self.connection is None or self.pid != os.getpid()
            if fresh:
                self.connection, self.pid = self.make(), os.getpid()
                # Connect first: a Sentinel-managed connection asks the Sentinels for the
                # master here (sending connects to its default host instead).
                self.connection.connect()
            try:
                try:
                    self.connection.send_command("EVALSHA", self.sha, 1, key, seconds, amount)
                    count, ttl = self.connection.read_response()
                except redis.exceptions.NoScriptError:
                    self.connection.send_command("EVAL", _HIT_SCRIPT, 1, key, seconds, amount)
                    count, ttl = self.connection.read_response()
                return int(count), int(ttl)
            except (redis.ConnectionError, redis.TimeoutError):
                self.connection.disconnect()
                self.connection = None
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


class RateLimiter:
    """The app's quotas; `check()` runs before each request, `add_headers()` after it.

    Writes are counted by api.http.auth instead, which knows whether the token was right:
    `guard_write()` before the comparison, then `write_refused()` or `write_allowed()`.
    """

    def __init__(self, app: Flask, read_blueprints: list[Blueprint],
                 job_blueprints: list[Blueprint]) -> None:
        config = app.config
        self.enabled = bool(config["RATELIMIT_ENABLED"])
        self.headers = bool(config["RATELIMIT_HEADERS_ENABLED"])
        self.swallow_errors = bool(config["RATELIMIT_SWALLOW_ERRORS"])
        self.prefix = str(config["RATELIMIT_KEY_PREFIX"])
        reads = ("reads", Quota.parse(str(config["RATELIMIT_READS"])))
        jobs = ("jobs", Quota.parse(str(config["RATELIMIT_JOBS"])))
        self.auth_fail = ("auth_fail", Quota.parse(str(config["RATELIMIT_AUTH_FAIL"])))
        # (blueprint name, method) -> the quota it counts against.
        self.scopes: dict[tuple[str, str], tuple[str, Quota]] = {
            (blp.name, method): reads for blp in read_blueprints for method in READ_METHODS}
        self.writes: dict[tuple[str, str], tuple[str, Quota]] = {
            (blp.name, "POST"): jobs for blp in job_blueprints}
        # REDIS_URL (plain or Sentinel, shared.redis_client) unless the config names another.
        uri, settings = str(config["RATELIMIT_STORAGE_URI"]), config["SETTINGS"]
        where = (redis_client.target(settings) if uri == settings.redis_url
                 else redis_client.parse_target(uri))
        self.hit = _HitScript(where, dict(config["RATELIMIT_STORAGE_OPTIONS"]))

    def check(self) -> None:
        """Count this read against its quota; 429 (TooManyRequests) once it is used up."""
        if not self.enabled or request.blueprint is None:
            return
        scope = self.scopes.get((request.blueprint, request.method))
        if scope is None or request.endpoint in EXEMPT_ENDPOINTS:
            return
        self._count(*scope)

    def guard_write(self) -> None:
        """429 when this client has used up its quota of refused tokens (a peek, not a hit)."""
        if self.enabled:
            self._count(*self.auth_fail, amount=0)

    def write_refused(self) -> None:
        """Count a request refused for its token in the client's auth-failure quota."""
        if self.enabled:
            self._count(*self.auth_fail, refuse=False)

    def write_allowed(self) -> None:
        """Count an authenticated write against its quota; 429 once it is used up."""
        scope = self.writes.get((request.blueprint or "", request.method))
        if self.enabled and scope is not None:
            self._count(*scope)

    def _count(self, name: str, quota: Quota, amount: int = 1, refuse: bool = True) -> None:
        """Add `amount` (0: only look) to the client's window; 429 past the quota if `refuse`."""
        key = (f"{self.prefix}:ratelimit:{name}:{quota.amount}/{quota.seconds}:"
               f"{request.remote_addr}")
        try:
            count, ttl = self.hit(key, quota.seconds, amount)
        except redis.RedisError as exc:
            if not self.swallow_errors:
                raise
            log.warning("rate limit storage unavailable, request let through: %s", exc)
            return
        ttl = max(ttl, 1)
        # A look asks whether one more request would be past the quota.
        used = count if amount else count + 1
        over = used > quota.amount
        if amount or over:
            g.rate_limit = (quota, used, ttl)
        if refuse and over:
            raise TooManyRequests(description=quota.text, retry_after=ttl)

    def add_headers(self, response: Response) -> Response:
        """X-RateLimit-Limit/-Remaining/-Reset on counted requests; Retry-After on 429, 503."""
        # A 503 sets its own (a read past its statement timeout, api/http/read_timeout.py).
        if response.status_code not in (429, 503):
            response.headers.pop("Retry-After", None)
        state = g.get("rate_limit")
        if state is not None and self.headers:
            quota, count, ttl = state
            response.headers["X-RateLimit-Limit"] = str(quota.amount)
            response.headers["X-RateLimit-Remaining"] = str(max(0, quota.amount - count))
            response.headers["X-RateLimit-Reset"] = str(int(time.time()) + ttl)
            if response.status_code == 429:
                response.headers["Retry-After"] = str(ttl)
        return response


def init_limits(app: Flask, read_blueprints: list[Blueprint],
                job_blueprints: list[Blueprint]) -> RateLimiter:
    """Attach the limiter: a shared read quota per client, one quota for the POSTs that queue
    jobs (/jobs, /backfills), and one for auth failures."""
    limiter = RateLimiter(app, read_blueprints, job_blueprints)
    app.before_request(limiter.check)
    app.after_request(limiter.add_headers)
    app.extensions["rate_limiter"] = limiter
    return limiter
