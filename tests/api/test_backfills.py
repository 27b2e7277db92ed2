"""POST /backfills (validation, dry run, idempotent creation) and GET /backfills/<id>."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from api import create_app
from tests.api.helpers import replay_settings, run_sources
from tests.conftest import count
from tests.upstream import ReplayUpstream


@pytest.fixture
def bf_client(clean_db: Engine, base_env: dict[str, str], csv_dir: Path,
              upstream: ReplayUpstream) -> Any:
    """An API client whose CoinGecko coins are known (one recorded markets page loaded)."""
    settings = replay_settings(base_env, csv_dir, upstream, BACKFILL_MAX_DAYS="401",
                               COINGECKO_RATE_LIMIT="30", COINGECKO_RATE_PERIOD_SECONDS="60")
    run_sources(clean_db, settings, ["coingecko"])
    return create_app({"TESTING": True, "RATELIMIT_ENABLED": False},
                      settings=settings).test_client()


def _since(days: int) -> str:
    return (datetime.now(timezone.utc) - timedelta(days=days)).isoformat()


def test_dry_run_counts_chunks_and_time_under_the_quota_and_writes_nothing(
    bf_client: Any, auth_headers: dict[str, str], clean_db: Engine,
) -> None:
    response = bf_client.post("/backfills", headers=auth_headers, json={
        "source": "coingecko", "top": 5, "since": _since(400), "dry_run": True})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    # 400 days in 90-day chunks: 5 hourly windows per coin, one request each.
    assert body["chunks"] == body["requests"] == 25
    assert body["granularity_seconds"] == [3600]
    assert [a["id"] for a in body["assets"]][:2] == ["bitcoin", "ethereum"]
    # 30 a minute at half share: 15 a minute, so 25 requests span two windows.
    assert body["quota"]["backfill_requests"] == 15
    assert body["estimated_seconds"] == 60
    assert count(clean_db, "backfills") == 0


def test_create_returns_the_same_backfill_for_the_same_request(
    bf_client: Any, auth_headers: dict[str, str], clean_db: Engine,
) -> None:
    request = {"source": "coingecko", "assets": ["ethereum", "bitcoin"], "since": _since(100),
               "until": _since(1)}
    first = bf_client.post("/backfills", headers=auth_headers, json=request)
    assert first.status_code == 202, first.get_json()
    body = first.get_json()
    assert body["chunk_counts"]["pending"] == len(body["chunks"]) == 4
    assert first.headers["Location"] == body["status_url"] == f"/backfills/{body['id']}"
    again = bf_client.post("/backfills", headers=auth_headers, json=request)
    assert again.status_code == 200 and again.get_json()["id"] == body["id"]
    assert count(clean_db, "backfills") == 1 and count(clean_db, "backfill_chunks") == 4
    shown = bf_client.get(body["status_url"]).get_json()
    assert shown["status"] == "queued"
    assert {c["coin_id"] for c in shown["chunks"]} == {"bitcoin", "ethereum"}
    assert bf_client.get("/backfills/999999").status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"assets": ["bitcoin"], "since": "2026-01-01"}, "source"),
    ({"source": "coinpaprika", "assets": ["bitcoin"], "since": "2026-01-01"}, "source"),
    ({"source": "coingecko", "assets": ["bitcoin"], "top": 3, "since": "2026-01-01"}, "assets"),
    ({"source": "coingecko", "assets": ["no-such-coin"], "since": "PAST"}, "assets"),
    ({"source": "coingecko", "top": 3, "since": "2001-01-01"}, "since"),
    ({"source": "coingecko", "top": 0, "since": "2026-01-01"}, "top"),
    ({"source": "coingecko", "top": 3, "since": "yesterday"}, "since"),
])
def test_bad_requests_are_422_naming_the_field(
    bf_client: Any, auth_headers: dict[str, str], body: dict[str, Any], field: str,
) -> None:
    if body.get("since") == "PAST":
        body = {**body, "since": _since(10)}
    response = bf_client.post("/backfills", headers=auth_headers, json=body)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]["json"]


def test_post_needs_the_token(bf_client: Any) -> None:
    response = bf_client.post("/backfills", json={"source": "coingecko", "top": 1,
                                                  "since": _since(10)})
    assert response.status_code == 401


def test_post_counts_in_the_jobs_quota(
    clean_db: Engine, base_env: dict[str, str], csv_dir: Path, upstream: ReplayUpstream,
    auth_headers: dict[str, str], redis_url: str,
) -> None:
    settings = replay_settings(base_env, csv_dir, upstream)
    client = create_app({"TESTING": True, "RATELIMIT_JOBS": "2/minute",
                         "RATELIMIT_KEY_PREFIX": f"bf-{datetime.now().timestamp()}"},
                        settings=settings).test_client()
    body = {"source": "coingecko", "top": 1, "since": _since(10), "dry_run": True}
    # No coin is stored, so each is a 422: still an authenticated write, counted.
    codes = [client.post("/backfills", headers=auth_headers, json=body).status_code
             for _ in range(3)]
    assert codes == [422, 422, 429]
    assert client.post("/jobs", headers=auth_headers, json={}).status_code == 429
