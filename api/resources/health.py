"""GET /health: is the service able to serve (database, broker)."""
from __future__ import annotations

import time
from typing import Any

import redis
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import text

from api.db import get_session
from api.schemas import HealthSchema

blp = Blueprint("health", __name__, url_prefix="/health", description="Health checks")


def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        check()
        result: dict[str, Any] = {"ok": True}
    except Exception as exc:  # a health check reports failures, it does not raise them
        result = {"ok": False, "error": type(exc).__name__}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


def _check_database() -> None:
    get_session().execute(text("SELECT 1"))


def _check_broker() -> None:
    client = redis.Redis.from_url(
        current_app.config["SETTINGS"].redis_url, socket_timeout=1, socket_connect_timeout=1
    )
    try:
        client.ping()
    finally:
        client.close()


@blp.route("")
class Health(MethodView):
    """Overall health."""

    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="Not serving")
    def get(self) -> Any:
        """Check the database and the broker; 503 names the failing check"""
        checks = {"database": _timed(_check_database), "broker": _timed(_check_broker)}
        ok = all(c["ok"] for c in checks.values())
        return {"status": "ok" if ok else "down", "checks": checks}, 200 if ok else 503
