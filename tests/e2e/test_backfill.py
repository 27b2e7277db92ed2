"""E2E: a 5-coin x 400-day backfill on real workers against the replay upstream, with kill -9."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import psutil
import pytest
from sqlalchemy import Engine, text

from api import create_app
from shared.sources.rate_limit import RedisRateLimiter
from tests.api.helpers import replay_settings, run_sources
from tests.helpers.waiting import poll, wait_for_job
from tests.upstream import ReplayUpstream, max_requests_in_window

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# A quota small enough that the backfill takes several windows (kill it mid-way) and big
# enough to stay fast: 10 requests per 3 s, the backfill's half of it 5.
QUOTA, PERIOD, SHARE = 10, 3, 0.5


def _wait(client: Any, url: str, ready: Any, timeout: float) -> dict[str, Any]:
    return poll(lambda: dict(client.get(url).get_json()), ready, timeout, url, interval=0.2)


def test_backfill_chunks_by_rules_survives_kill_9_respects_quota_and_serves_history(
    clean_db: Engine, base_env: dict[str, str], csv_dir: Path, upstream: ReplayUpstream,
    worker_factory: Any, auth_headers: dict[str, str],
) -> None:
    env = {"COINGECKO_BASE_URL": upstream.coingecko_base_url,
           "COINGECKO_RATE_LIMIT": str(QUOTA), "COINGECKO_RATE_PERIOD_SECONDS": str(PERIOD),
           "BACKFILL_QUOTA_SHARE": str(SHARE), "BACKFILL_MAX_DAYS": "401",
           # Longer than the held request waits for the kill: it stays one request in flight
           # (a client timeout would retry it, and three would fail the chunk).
           "HTTP_TIMEOUT_SECONDS": "30", "HTTP_MAX_RETRIES": "2",
           "HTTP_BACKOFF_MAX_SECONDS": "1", "CSV_DIR": str(csv_dir)}
    settings = replay_settings(base_env, csv_dir, upstream, **env)
    for name in ("coingecko", "coingecko-backfill"):
        RedisRateLimiter(settings.redis_url, name, settings.coingecko_rate).clear()
    run_sources(clean_db, settings, ["coingecko"])  # the coins and their ranks
    client = create_app({"TESTING": True, "RATELIMIT_ENABLED": False},
                        settings=settings).test_client()
    worker = worker_factory(env)
    first_request = len(upstream.requests())
    since = datetime.now(timezone.utc) - timedelta(days=400)
    response = client.post("/backfills", headers=auth_headers, json={
        "source": "coingecko", "top": 5, "since": since.isoformat()})
    assert response.status_code == 202, response.get_json()
    url = response.get_json()["status_url"]
    chunks = response.get_json()["chunks"]
    # 400 days in 90-day chunks (the longest range CoinGecko answers hourly): 5 per coin.
    assert len(chunks) == 25 and {c["granularity_seconds"] for c in chunks} == {3600}
    # Chunks run one at a time in id order, and the share lets 5 requests through per 3 s
    # window, so the 11th chunk's request comes 6 s from now at the earliest. Hold it (and any
    # retry of it) until released: the backfill is running at every step below, and a chunk is
    # in flight when its worker child is killed, by arrangement rather than timing.
    target = sorted(chunks, key=lambda c: c["id"])[10]
    target_from = str(int(datetime.fromisoformat(target["window_start"]).timestamp()))
    hold = upstream.hold(endpoint="coingecko",
                         path=f"/api/v3/coins/{target['coin_id']}/market_chart/range",
                         query={"from": target_from})

    # A scheduled-style job meanwhile: the backfill's share leaves it the rest of the quota.
    _wait(client, url, lambda b: b["chunk_counts"]["done"] >= 3, 60)
    job = client.post("/jobs", headers=auth_headers, json={"sources": ["coingecko"]})
    assert job.status_code == 202, job.get_json()
    finished = wait_for_job(client, job.get_json()["id"], timeout=30)
    assert finished["status"] == "succeeded", finished
    with clean_db.connect() as conn:
        waited = conn.execute(text("SELECT rate_limit_wait_seconds FROM runs WHERE id = :id"),
                              {"id": finished["runs"][0]["id"]}).scalar()
    assert waited < PERIOD  # never a whole window: the backfill cannot take every slot
    assert client.get(url).get_json()["status"] == "running"

    # The target chunk's request has reached the upstream and waits there: its execution is
    # mid-chunk (claimed, nothing of it committed) when every worker child is killed.
    (held,) = upstream.wait_held(hold, timeout=90)
    assert parse_qs(held["query"])["from"] == [target_from]
    before = client.get(url).get_json()
    in_flight = {c["id"]: c for c in before["chunks"]}[target["id"]]
    assert (in_flight["status"], in_flight["attempts"]) == ("running", 1), in_flight
    assert before["chunk_counts"]["done"] == 10, before["chunk_counts"]
    children = psutil.Process(worker.proc.pid).children(recursive=True)
    assert children
    for child in children:
        child.kill()  # SIGKILL mid-chunk: the task message comes back, the chunk re-runs
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, alive
    # Only now may the held request be answered: the execution that sent it is dead.
    upstream.release(hold)
    body = _wait(client, url, lambda b: b["status"] not in ("queued", "running"), 120)
    assert body["status"] == "succeeded", body["chunk_counts"]
    assert body["chunk_counts"]["done"] == 25, body["chunk_counts"]
    assert [c["status"] for c in body["chunks"]] == ["done"] * 25
    # The killed execution's chunk was finished by a later attempt (the killed one counted).
    rerun = {c["id"]: c for c in body["chunks"]}[target["id"]]
    assert rerun["status"] == "done" and rerun["attempts"] >= 2, rerun
    # Nothing of the target window reached the upstream before the hold was in place.
    window = [r for r in upstream.requests() if r["path"] == held["path"]
              and parse_qs(r["query"]).get("from") == [target_from]]
    assert window[0]["seq"] == held["seq"], window

    with clean_db.connect() as conn:
        per_coin = conn.execute(text(
            "SELECT source_asset_id, count(*), count(DISTINCT observed_at), "
            "min(observed_at), max(observed_at), max(step), min(step) FROM ("
            " SELECT source_asset_id, observed_at, observed_at - lag(observed_at) OVER "
            " (PARTITION BY asset_id ORDER BY observed_at) AS step FROM quotes "
            " WHERE run_id = :run) s GROUP BY source_asset_id"),
            {"run": body["run_id"]}).all()
        raw = conn.execute(text("SELECT count(*) FROM raw_items WHERE run_id = :run"),
                           {"run": body["run_id"]}).scalar()
    first = datetime.fromisoformat(body["since"])
    last = datetime.fromisoformat(body["until"])
    hours = int(last.timestamp()) // 3600 - -(-int(first.timestamp()) // 3600) + 1
    assert len(per_coin) == 5
    for coin, n, distinct, _, _, biggest, smallest in per_coin:
        # Every hour of the range exactly once: no gap, no duplicate, across the kill.
        assert n == distinct == hours, coin
        assert biggest == smallest == timedelta(hours=1), coin
    assert raw == 25  # one raw payload per chunk, a re-fetched chunk stored once

    # The quota: never more than the backfill's share in any window of the period (less a
    # quarter second: the server stamps arrivals, the limiter grants slots a little earlier;
    # the same allowance as tests/shared/sources/test_http.py).
    calls = [r for r in upstream.requests()[first_request:]
             if r["path"].endswith("/market_chart/range")]
    assert len(calls) >= 25
    assert max_requests_in_window([r["mono"] for r in calls], PERIOD - 0.25) <= int(QUOTA * SHARE)

    history = client.get("/data/bitcoin/history", query_string={
        "source": "coingecko", "since": (last - timedelta(days=30)).isoformat(),
        "until": last.isoformat(), "total": "true"}).get_json()
    assert history["pagination"]["total"] >= 30 * 24
    status = client.get("/status")
    assert status.status_code == 200
    assert f"backfill {body['id']}" in status.get_data(as_text=True).lower()
