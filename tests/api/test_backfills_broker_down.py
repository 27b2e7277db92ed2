"""POST /backfills with its Redis stopped: a 503, the backfill failed, and a later POST works."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import Engine, text

from api import create_app
from shared.jobs.submit import NOT_QUEUED
from tests.api.helpers import replay_settings, run_sources
from tests.conftest import count
from tests.helpers.waiting import poll
from tests.redis_server import RedisServer
from tests.upstream import ReplayUpstream

# Starts real processes (its own redis-server, a celery worker): not in the fast subset.
pytestmark = pytest.mark.processes

ACTIVE = "status IN ('queued', 'running')"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server that the test may stop; killed after the test."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def _since(days: int) -> str:
    return (datetime.now(timezone.utc) - timedelta(days=days)).isoformat()


def test_post_backfills_with_redis_stopped_is_503_fails_the_backfill_then_works_again(
    clean_db: Engine, base_env: dict[str, str], csv_dir: Path, upstream: ReplayUpstream,
    own_redis: RedisServer, worker_factory: Any, auth_headers: dict[str, str],
) -> None:
    env = {"REDIS_URL": own_redis.url, "COINGECKO_BASE_URL": upstream.coingecko_base_url,
           "CSV_DIR": str(csv_dir)}
    # The send with Redis stopped fails after one result-backend retry, not 20 s of them.
    settings = replay_settings(base_env, csv_dir, upstream, **env, RESULT_BACKEND_MAX_RETRIES="1")
    run_sources(clean_db, settings, ["coingecko"])  # the coins the request names
    client = create_app({"TESTING": True, "RATELIMIT_ENABLED": False},
                        settings=settings).test_client()
    request = {"source": "coingecko", "assets": ["bitcoin"], "since": _since(5),
               "until": _since(1)}

    own_redis.kill()
    response = client.post("/backfills", headers=auth_headers, json=request)
    assert response.status_code == 503, response.get_data(as_text=True)
    body = response.get_json()
    # The usual error body (`errors` only when there are field errors).
    assert set(body) <= {"code", "status", "message", "errors"}
    assert body["code"] == 503 and body["status"] == "Service Unavailable"
    assert body["message"] == NOT_QUEUED
    # Committed before the send, then failed with the reason: one of each, nothing active.
    assert count(clean_db, "backfills", "status = 'failed' AND error = :e "
                 "AND finished_at IS NOT NULL", e=NOT_QUEUED) == count(clean_db, "backfills") == 1
    assert count(clean_db, "jobs", "trigger = 'backfill' AND status = 'failed' AND error = :e",
                 e=NOT_QUEUED) == 1
    assert count(clean_db, "runs", "source = 'coingecko' AND kind = 'backfill' "
                 "AND status = 'failed' AND error = :e", e=NOT_QUEUED) == 1
    for table in ("backfills", "jobs", "runs", "backfill_chunks"):
        assert count(clean_db, table, ACTIVE) == 0, table
    assert count(clean_db, "backfill_chunks", "status = 'pending' AND attempts = 0") == 1
    backfill_id = _only_backfill_id(clean_db)
    shown = client.get(f"/backfills/{backfill_id}").get_json()
    assert shown["status"] == "failed" and shown["error"] == NOT_QUEUED

    # The broker is back (empty: no message of the failed attempt was ever sent).
    own_redis.start()
    assert own_redis.queued() == 0
    again = client.post("/backfills", headers=auth_headers, json=request)
    assert again.status_code == 200, again.get_json()  # the same backfill, sent again
    assert again.get_json()["id"] == backfill_id and own_redis.queued() == 1
    other = client.post("/backfills", headers=auth_headers,
                        json={**request, "assets": ["ethereum"]})
    assert other.status_code == 202, other.get_json()
    assert own_redis.queued() == 2

    worker_factory(env)  # this session's BROKER_KEY_PREFIX comes with base_env
    for url in (f"/backfills/{backfill_id}", other.get_json()["status_url"]):
        done = _wait_ended(client, url)
        assert done["status"] == "succeeded" and done["error"] is None, done
        assert done["chunk_counts"]["done"] == len(done["chunks"]) == 1 and done["points"] > 0
    assert count(clean_db, "jobs", "trigger = 'backfill' AND status = 'succeeded'") == 2


def _only_backfill_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT id FROM backfills")).scalar_one())


def _wait_ended(client: Any, url: str, timeout: float = 60) -> dict[str, Any]:
    def ended(body: dict[str, Any]) -> bool:
        return body["status"] not in ("queued", "running", "failed") or (
            body["status"] == "failed" and body["error"] != NOT_QUEUED)

    return poll(lambda: dict(client.get(url).get_json()), ended, timeout, url)
