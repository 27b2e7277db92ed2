"""GET /health (database, broker, workers, freshness), /health/live and /health/ready."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.broker import check_workers
from api.db import get_session
from api.schemas.health import HealthSchema, LiveSchema
from api.http.read_timeout import count_timeout, is_statement_timeout, use_probe_timeout
from shared import redis_client
from shared.queries.freshness import FAILING, STALE, source_states

blp = Blueprint("health", __name__, url_prefix="/health", description="Health checks")
# A probe's reads have their own bound: a tight API_STATEMENT_TIMEOUT_MS never reads as a
# database outage, and a blocked table still cannot hold the probe (api/http/read_timeout.py).
blp.before_request(use_probe_timeout)


def _timed(check: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """Run a check: ok unless it raises or says otherwise, with its latency."""
    started = time.perf_counter()
    try:
        result: dict[str, Any] = {"ok": True, **(check() or {})}
    except Exception as exc:  # a health check reports failures, it does not raise them
        result = {"ok": False, "error": type(exc).__name__}
        if isinstance(exc, SQLAlchemyError):
            _end_failed_transaction()
        if is_statement_timeout(exc):
            count_timeout()
            result["error"] = "statement timeout"
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


def _end_failed_transaction() -> None:
    # The next check starts a transaction of its own instead of failing in the aborted one.
    try:
        get_session().rollback()
    except SQLAlchemyError:
        pass  # a dead connection: the next check reports it


def _check_database() -> None:
    get_session().execute(text("SELECT 1"))


def _check_broker() -> None:
    client = redis_client.client(current_app.config["SETTINGS"], socket_timeout=1,
                                 socket_connect_timeout=1)
    try:
        client.ping()
    finally:
        client.close()


def _check_freshness() -> dict[str, Any]:
    """Every enabled source's state against its objective (shared.queries.freshness)."""
    settings = current_app.config["SETTINGS"]
    states = source_states(get_session(), settings, datetime.now(timezone.utc))
    sources = {name: state.as_dict() for name, state in states.items()}
    result: dict[str, Any] = {"ok": all(s.fresh for s in states.values()),
                              "max_age_seconds": max(
                                  (s.objective_seconds for s in states.values()), default=0),
                              "sources": sources}
    if not result["ok"]:
        named = {state: sorted(n for n, s in states.items() if s.state == state)
                 for state in (FAILING, STALE)}
        result["error"] = "; ".join(f"{state} sources: {', '.join(names)}"
                                    for state, names in named.items() if names)
    return result


@blp.route("")
class Health(MethodView):
    """Overall health."""

    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="Not serving")
    def get(self) -> Any:
        """Check database, broker, live workers and source freshness

        `down` (503) when the database or the broker is unreachable; `degraded` (200) when no
        worker answers, a source is stale or failing against its freshness objective
        (FRESHNESS_<SOURCE>_SECONDS, default 3 schedule periods), or a read replica is not in
        use (lagging past REPLICA_MAX_LAG_SECONDS, down: reads go to the primary).
        """
        checks: dict[str, Any] = {"database": _timed(_check_database),
                                  "broker": _timed(_check_broker)}
        if checks["broker"]["ok"]:
            checks["workers"] = _timed(check_workers)
        if checks["database"]["ok"]:
            checks["freshness"] = _timed(_check_freshness)
        replicas = current_app.extensions["db_replicas"]
        if replicas:  # DATABASE_READ_URLS: each one's lag and whether reads go there
            checks["replicas"] = _timed(replicas.health_check)
        if not (checks["database"]["ok"] and checks["broker"]["ok"]):
            return {"status": "down", "checks": checks}, 503
        degraded = not all(c["ok"] for c in checks.values())
        return {"status": "degraded" if degraded else "ok", "checks": checks}, 200


@blp.route("/live")
class Live(MethodView):
    """Liveness."""

    @blp.response(200, LiveSchema)
    def get(self) -> Any:
        """Answer while the process is up (no I/O)"""
        return {"status": "ok"}


@blp.route("/ready")
class Ready(MethodView):
    """Readiness."""

    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="Not ready")
    def get(self) -> Any:
        """Check that the database and the broker answer; 503 names the failing check"""
        checks = {"database": _timed(_check_database), "broker": _timed(_check_broker)}
        ok = all(c["ok"] for c in checks.values())
        return {"status": "ok" if ok else "down", "checks": checks}, 200 if ok else 503
