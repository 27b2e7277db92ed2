"""GET /health (database, broker, workers, freshness), /health/live, /health/ready."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from shared.config import Settings, load_settings
from tests.api.helpers import coins_csv
from tests.helpers.csv_runs import HEADER, only_file, run_csv


def _app(settings: Settings, **config: Any) -> Any:
    from api import create_app

    return create_app({"TESTING": True, **config}, settings=settings).test_client()


def _csv_only(base_env: dict[str, str], csv_dir: Path, **env: str) -> Settings:
    return load_settings({**base_env, "CSV_DIR": str(csv_dir), "ETL_SOURCES": "csv", **env})


def test_live_and_ready(clean_db: Engine, client: Any, base_env: dict[str, str]) -> None:
    assert client.get("/health/live").get_json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    body = ready.get_json()
    assert body["status"] == "ok" and set(body["checks"]) == {"database", "broker"}

    nothing = load_settings({
        **base_env, "REDIS_URL": "redis://127.0.0.1:1/0",
        "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/none",
    })
    down = _app(nothing)
    # Liveness does no I/O: it answers while everything else is down.
    assert down.get("/health/live").status_code == 200
    ready = down.get("/health/ready")
    assert ready.status_code == 503
    assert ready.get_json()["status"] == "down"
    health = down.get("/health")
    assert health.status_code == 503
    checks = health.get_json()["checks"]
    assert checks["database"]["ok"] is False and checks["broker"]["ok"] is False
    assert "workers" not in checks and "freshness" not in checks


def test_database_down_is_503(client: Any, base_env: dict[str, str]) -> None:
    broken = load_settings({**base_env,
                            "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/none"})
    response = _app(broken).get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "down" and body["checks"]["database"]["ok"] is False
    assert body["checks"]["broker"]["ok"] is True


def test_degraded_without_worker_even_when_fresh(
    clean_db: Engine, base_env: dict[str, str], csv_dir: Path
) -> None:
    settings = _csv_only(base_env, csv_dir)
    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 3))
    assert run_csv(clean_db, settings)["status"] == "succeeded"
    body = _app(settings, HEALTH_WORKER_PING_TIMEOUT=0.2).get("/health").get_json()
    assert body["checks"]["freshness"]["ok"] is True
    assert body["checks"]["freshness"]["sources"]["csv"]["fresh"] is True
    assert body["checks"]["workers"] == {**body["checks"]["workers"], "ok": False, "count": 0}
    assert body["status"] == "degraded"


@pytest.mark.processes
def test_ok_with_a_live_worker_and_fresh_sources_then_stale(
    clean_db: Engine, base_env: dict[str, str], csv_dir: Path, worker_factory: Any
) -> None:
    settings = _csv_only(base_env, csv_dir, ETL_SCHEDULE_SECONDS="60")
    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 3))
    run = run_csv(clean_db, settings)
    worker_factory({"CSV_DIR": str(csv_dir)})
    client = _app(settings, HEALTH_WORKERS_CACHE_SECONDS=0)
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "ok", body
    assert body["checks"]["workers"]["count"] >= 1
    freshness = body["checks"]["freshness"]
    assert freshness["max_age_seconds"] == 180
    assert freshness["sources"]["csv"]["age_seconds"] < 60

    # Three schedule periods later without a success the source is stale: degraded, not down.
    with clean_db.begin() as conn:
        conn.execute(text("UPDATE runs SET finished_at = now() - interval '181 seconds' "
                          "WHERE id = :id"), {"id": run["id"]})
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "degraded"
    assert body["checks"]["freshness"]["ok"] is False
    assert body["checks"]["freshness"]["error"] == "stale sources: csv"
    assert body["checks"]["workers"]["ok"] is True


def test_only_liveness_is_exempt_from_the_read_quota(clean_db: Engine, settings: Settings
                                                     ) -> None:
    """/health and /health/ready do real work (database, broker, worker ping): they count as
    reads (issue 14); /health/live does none and must answer whatever a client does."""
    client = _app(settings, RATELIMIT_READS="2/minute", HEALTH_WORKER_PING_TIMEOUT=0.05)
    assert client.get("/health/ready").status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/health/ready").status_code == 429
    assert client.get("/health").status_code == 429
    for _ in range(5):
        assert client.get("/health/live").status_code == 200
