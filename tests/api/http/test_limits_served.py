"""The API under gunicorn (as `make run` serves it) takes its quotas from the environment.

Reads, authenticated writes and refused tokens each have their own quota; /health/live is
never limited; POST /jobs answers bad bodies with a 4xx whatever the serving process.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
import requests
from sqlalchemy import Engine

from tests.conftest import ROOT, TEST_TOKEN, count
from tests.helpers.serving import Gunicorn

pytestmark = pytest.mark.e2e

# Windows of 59 s: keys no other test uses (the served app's key prefix is the real one).
READS, JOBS, AUTH_FAIL = "3 per 59 seconds", "5 per 59 seconds", "2 per 59 seconds"
AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


def _forget_counters(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match="kasparro:ratelimit:*/59:*", count=500):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture
def served(clean_db: Engine, base_env: dict[str, str], redis_url: str, tmp_path: Path
           ) -> Iterator[str]:
    """gunicorn with API_READ_RATE_LIMIT, API_JOBS_RATE_LIMIT, API_AUTH_FAIL_RATE_LIMIT set."""
    _forget_counters(redis_url)
    env = {**os.environ, **base_env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           "API_READ_RATE_LIMIT": READS, "API_JOBS_RATE_LIMIT": JOBS,
           "API_AUTH_FAIL_RATE_LIMIT": AUTH_FAIL}
    try:
        server = Gunicorn(env, tmp_path / "api.log")
        try:
            yield server.base
        finally:
            server.stop()
    finally:
        _forget_counters(redis_url)


def _post(base: str, **kwargs: Any) -> requests.Response:
    return requests.post(f"{base}/jobs", timeout=10, **kwargs)


def test_served_api_takes_its_quotas_from_the_environment(
    served: str, clean_db: Engine
) -> None:
    base = served
    # Reads: 3 per window, shared by data, stats and metrics; the liveness probe is exempt.
    assert requests.get(f"{base}/stats", timeout=10).status_code == 200
    assert requests.get(f"{base}/metrics", timeout=10).status_code == 200
    third = requests.get(f"{base}/data", timeout=10)
    assert third.status_code == 200 and third.headers["X-RateLimit-Limit"] == "3"
    limited = requests.get(f"{base}/health", timeout=10)
    assert limited.status_code == 429
    assert 0 < int(limited.headers["Retry-After"]) <= 59
    assert limited.json()["code"] == 429
    assert all(requests.get(f"{base}/health/live", timeout=10).status_code == 200
               for _ in range(10))

    # Writes with the token: bad bodies are 4xx (each counted), then the quota of 5 runs out.
    nested = _post(base, data="[" * 20_000 + "]" * 20_000,
                   headers={**AUTH, "Content-Type": "application/json"})
    assert nested.status_code == 400
    plain = _post(base, data='{"sources":["csv"]}', headers={**AUTH, "Content-Type": "text/plain"})
    assert plain.status_code == 415
    mixed = _post(base, json={"sources": ["csv", "csv", "__not_in_enum__"]}, headers=AUTH)
    assert mixed.status_code == 422 and "sources" in mixed.json()["errors"]["json"]
    assert count(clean_db, "jobs") == 0
    for _ in range(2):
        assert _post(base, json={"sources": ["csv"]}, headers=AUTH).status_code == 202
    assert _post(base, json={"sources": ["csv"]}, headers=AUTH).status_code == 429
    assert count(clean_db, "jobs") == 2

    # Refused tokens have their own quota: not blocked by the used-up job quota, and once
    # their own 2 are used up, this client's writes are 429 before any comparison.
    assert _post(base, json={}, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert _post(base, json={}).status_code == 401
    assert _post(base, json={}, headers={"Authorization": "Bearer wrong"}).status_code == 429
    assert count(clean_db, "jobs") == 2
