"""Request rate limits (flask-limiter, counters in Redis, keyed by client address)."""
from __future__ import annotations

import uuid

from flask import Flask, Response, current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_smorest import Blueprint

READ_METHODS = ["GET", "HEAD", "OPTIONS"]


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
    app.config.setdefault("RATELIMIT_JOBS", "10/minute")
    app.config.setdefault("RATELIMIT_READS", "600/minute")


def _jobs_limit() -> str:
    return str(current_app.config["RATELIMIT_JOBS"])


def _reads_limit() -> str:
    return str(current_app.config["RATELIMIT_READS"])


def init_limits(app: Flask, read_blueprints: list[Blueprint], jobs_blueprint: Blueprint) -> Limiter:
    """Attach a limiter: one shared read quota per client, and a POST /jobs quota."""

    @app.after_request
    def _retry_after_only_when_limited(response: Response) -> Response:
        # flask-limiter sends Retry-After with every limited answer; it only means "wait" on a 429.
        # (Registered before the limiter's own hook, so it runs after it.)
        if response.status_code != 429:
            response.headers.pop("Retry-After", None)
        return response

    limiter = Limiter(key_func=get_remote_address)
    limiter.init_app(app)
    reads = limiter.shared_limit(_reads_limit, scope="reads", methods=READ_METHODS)
    for blp in read_blueprints:
        reads(blp)
    limiter.limit(_jobs_limit, methods=["POST"])(jobs_blueprint)
    app.extensions["limiter_instance"] = limiter
    return limiter
