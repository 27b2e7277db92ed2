"""/status and /status/assets/<id>: server-rendered from real runs, cached briefly, limited."""
from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, text

from shared.config import Settings
from tests.api.helpers import run_sources
from tests.upstream import ReplayUpstream


@pytest.fixture
def failing_paprika(clean_db: Engine, api_settings: Settings, upstream: ReplayUpstream
                    ) -> dict[str, Any]:
    """Three sources loaded, CoinPaprika refused (401); one flagged bitcoin quote; one
    notification of each outcome."""
    upstream.add_fault("401", endpoint="coinpaprika")
    job = run_sources(clean_db, api_settings, ["coingecko", "coinpaprika", "csv"])
    now = datetime.now(timezone.utc)
    with clean_db.begin() as conn:
        btc = conn.execute(text("SELECT id FROM assets WHERE slug = 'bitcoin'")).scalar_one()
        conn.execute(text(
            "INSERT INTO quote_flags (asset_id, source, observed_at, flags) "
            "SELECT asset_id, source, observed_at, '[{\"flag\": \"outlier\"}]' FROM quotes "
            "WHERE asset_id = :a AND source = 'csv' ORDER BY observed_at DESC LIMIT 1"),
            {"a": btc})
        for status in ("sent", "failed"):
            conn.execute(text(
                "INSERT INTO notifications (source, event, state, severity, target, status, "
                "run_id, job_id, consecutive_failures, detail, attempts, error, created_at) "
                "VALUES ('coinpaprika', 'failed', 'failing', 'warning', 'webhook', :s, NULL, "
                ":j, 1, 'coinpaprika: HTTP 401 from upstream', 1, :e, :now)"),
                {"s": status, "j": job["id"], "now": now,
                 "e": "HTTP 500" if status == "failed" else None})
    return {"job": job, "btc": btc}


def _client(api_settings: Settings, **config: Any) -> Any:
    from api import create_app

    return create_app({"TESTING": True, "RATELIMIT_ENABLED": False, **config},
                      settings=api_settings).test_client()


def test_status_shows_states_runs_quality_workers_and_notifications(
        failing_paprika: dict[str, Any], api_settings: Settings) -> None:
    client = _client(api_settings)
    response = client.get("/status")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    states = dict(re.findall(r'data-source="(\w+)" data-state="(\w+)"', html))
    assert states == {"coingecko": "fresh", "coinpaprika": "failing", "csv": "fresh"}
    assert "coinpaprika: HTTP 401 from upstream" in html
    run_ids = [r["id"] for r in failing_paprika["job"]["runs"]]
    for run_id in run_ids:  # every run is a grid cell linking to its JSON
        assert f'href="/runs/{run_id}"' in html
    assert html.count('class="cell"') == len(run_ids)
    assert html.count("<polyline") >= 6  # two sparklines per source
    assert 'href="/anomalies"' in html and "flagged quotes" in html
    assert "workers online" in html and "tasks waiting" in html
    assert '<span class="badge sent">1 sent</span>' in html
    assert '<span class="badge failed">1 failed</span>' in html
    assert f'href="/status/assets/{failing_paprika["btc"]}"' in html
    assert '<meta http-equiv="refresh"' in html
    assert html.count("<h1>") == 1
    # Nothing from outside this app.
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_asset_page_charts_sources_consensus_and_flags(
        failing_paprika: dict[str, Any], api_settings: Settings, clean_db: Engine) -> None:
    client = _client(api_settings)
    btc = failing_paprika["btc"]
    html = client.get(f"/status/assets/{btc}?range=all").get_data(as_text=True)
    assert "<h1>Bitcoin (BTC)</h1>" in html
    series = set(re.findall(r'data-series="([^"]+)"', html))
    assert {"coingecko", "csv"} <= series
    # Flags stored in the quote's row (flag_set) or as a flag document (quote_flags).
    flagged_sql = text(
        "SELECT min(q.observed_at), max(q.observed_at), count(*), count(f.asset_id) "
        "FROM quotes q LEFT JOIN quote_flags f ON (f.asset_id, f.source, f.observed_at) = "
        "(q.asset_id, q.source, q.observed_at) WHERE q.asset_id = :a AND q.price_usd IS NOT NULL "
        "AND q.observed_at >= :since AND (q.flag_set IS NOT NULL OR f.asset_id IS NOT NULL)")
    with clean_db.connect() as conn:  # the pipeline may flag some too
        first, last, flagged, documented = conn.execute(
            flagged_sql, {"a": btc, "since": datetime.min.replace(tzinfo=timezone.utc)}).one()
    # Over all of the history: every quote with a flag document is ringed, and a quote whose
    # own row is flagged where it is drawn (one point per source and bucket of the range).
    assert documented >= 1 and documented <= html.count('class="marked"') <= flagged
    # Over a few days, where every quote is drawn: every flagged quote is ringed.
    since = last - timedelta(days=3)
    with clean_db.connect() as conn:
        _, _, recent, _ = conn.execute(flagged_sql, {"a": btc, "since": since}).one()
    near = client.get(f"/status/assets/{btc}?since={since:%Y-%m-%dT%H:%M:%S}Z"
                      f"&until={last + timedelta(seconds=1):%Y-%m-%dT%H:%M:%S}Z")
    assert near.status_code == 200, near.get_data(as_text=True)[:500]
    assert recent >= 1 and near.get_data(as_text=True).count('class="marked"') == recent
    points = re.search(r'data-series="csv"><polyline[^>]* points="([^"]+)"', html)
    assert points and len(points.group(1).split()) > 50
    slug = client.get("/status/assets/bitcoin")
    assert slug.status_code == 200 and "Bitcoin (BTC)" in slug.get_data(as_text=True)
    custom = client.get(f"/status/assets/{btc}?since=2020-01-01&until=2020-03-01")
    assert custom.status_code == 200 and "(custom range)" in custom.get_data(as_text=True)
    with clean_db.connect() as conn:
        newest = conn.execute(text("SELECT max(observed_at) FROM quotes WHERE asset_id = :a"),
                              {"a": btc}).scalar_one()
    since = quote((newest + timedelta(days=1)).isoformat())
    empty = client.get(f"/status/assets/{btc}?since={since}")
    page = empty.get_data(as_text=True)
    assert empty.status_code == 200 and "No price in this range" in page and ">no data<" in page


def test_asset_page_draws_long_history_on_a_log_axis_with_each_latest_point(
        failing_paprika: dict[str, Any], api_settings: Settings) -> None:
    client = _client(api_settings)
    btc = failing_paprika["btc"]
    html = client.get(f"/status/assets/{btc}?range=all").get_data(as_text=True)
    # 2013 to 2026 spans > 100x: log by default, a link to the linear axis keeping the range.
    assert '<svg' in html and 'data-scale="log"' in html and 'id="scale" data-scale="log"' in html
    ticks = re.findall(r'class="tick"[^>]*>([^<]+)<', html)
    assert ticks == ["100", "1,000", "10,000", "100,000"]
    assert 'href="?range=all&amp;scale=linear"' in html
    latest = dict(re.findall(r'class="latest" data-series="(\w+)" data-shape="([\w-]+)"', html))
    assert set(latest) == {"coingecko", "csv"} and len(set(latest.values())) == 2
    labels = re.findall(r'class="latest-label"[^>]*>([^<]+)<', html)
    assert sorted(label.split()[0] for label in labels) == ["coingecko", "csv"]
    # Asked for linear: linear, kept by the range form, with a link back to log.
    linear = client.get(f"/status/assets/{btc}?range=all&scale=linear").get_data(as_text=True)
    assert 'id="scale" data-scale="linear"' in linear and "as chosen" in linear
    assert '<input type="hidden" name="scale" value="linear">' in linear
    assert 'href="?range=all&amp;scale=log"' in linear
    # Two months of 2020 span less than 100x: linear by default, log on request.
    short = "since=2020-01-01&until=2020-03-01"
    assert 'id="scale" data-scale="linear"' in client.get(
        f"/status/assets/{btc}?{short}").get_data(as_text=True)
    assert 'id="scale" data-scale="log"' in client.get(
        f"/status/assets/{btc}?{short}&scale=log").get_data(as_text=True)
    auto = client.get(f"/status/assets/{btc}?scale=auto").get_data(as_text=True)
    assert 'id="scale" data-scale="log"' in auto and 'name="scale"' not in auto


@pytest.mark.parametrize(("query", "field"), [
    ("range=5y", "range"), ("since=yesterday", "since"), ("until=2020-13-01", "until"),
    ("since=2021-01-02&until=2021-01-01", "since"), ("colour=red", "colour"),
    ("scale=sqrt", "scale"),
])
def test_asset_page_bad_parameters_are_a_422_naming_them(
        clean_db: Engine, api_settings: Settings, query: str, field: str) -> None:
    response = _client(api_settings).get(f"/status/assets/1?{query}")
    assert response.status_code == 422
    assert field in response.get_json()["errors"]["query"]


def test_unknown_asset_is_a_404(clean_db: Engine, api_settings: Settings) -> None:
    assert _client(api_settings).get("/status/assets/no-such-coin").status_code == 404


def test_page_is_cached_briefly_per_data_version(
        failing_paprika: dict[str, Any], api_settings: Settings, clean_db: Engine) -> None:
    client = _client(api_settings, STATUS_CACHE_SECONDS=3600)
    first = client.get("/status").get_data()
    with clean_db.begin() as conn:  # a new run that does not publish: the cache still holds
        job = conn.execute(text("INSERT INTO jobs (status, sources, trigger) VALUES "
                                "('queued', ARRAY['csv'], 'cli') RETURNING id")).scalar_one()
        conn.execute(text("INSERT INTO runs (job_id, source, status) VALUES (:j, 'csv', "
                          "'queued')"), {"j": job})
    assert client.get("/status").get_data() == first
    assert client.get("/status?junk=1").get_data() == first  # no parameter: one entry
    uncached = _client(api_settings, STATUS_CACHE_SECONDS=0).get("/status").get_data()
    assert uncached.count(b'class="cell"') == first.count(b'class="cell"') + 1


def test_status_and_metrics_count_against_the_read_quota(
        clean_db: Engine, api_settings: Settings) -> None:
    from api import create_app

    client = create_app({"TESTING": True, "RATELIMIT_READS": "3/minute"},
                        settings=api_settings).test_client()
    answers = [client.get(path).status_code for path in
               ("/status", "/metrics", "/status/assets/no-such-coin", "/status", "/metrics")]
    assert answers == [200, 200, 404, 429, 429]
    limited = client.get("/status")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0


def test_index_links_the_status_page(clean_db: Engine, api_settings: Settings) -> None:
    body = _client(api_settings).get("/", headers={"Accept": "application/json"}).get_json()
    assert {"href": "/status", "title": "Status page: sources, last runs, quality, workers, "
            "backfills", "methods": ["GET"], "templated": False} in body["links"]


def test_stats_show_sent_and_failed_notifications(
        failing_paprika: dict[str, Any], api_settings: Settings) -> None:
    body = _client(api_settings).get("/stats").get_json()["notifications"]
    assert body["last_24h"] == {"sent": 1, "failed": 1}
    assert body["by_target_24h"] == {"webhook": {"sent": 1, "failed": 1}}
    assert [(n["status"], n["error"]) for n in body["recent"]] == [
        ("failed", "HTTP 500"), ("sent", None)]
    assert body["recent"][0]["detail"] == "coinpaprika: HTTP 401 from upstream"


def test_status_with_the_broker_down_still_renders(
        clean_db: Engine, base_env: dict[str, str]) -> None:
    from api import create_app
    from shared.config import load_settings

    settings = load_settings({**base_env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    client = create_app({"TESTING": True, "HEALTH_WORKER_PING_TIMEOUT": 0.2},
                        settings=settings).test_client()
    started = time.perf_counter()
    response = client.get("/status")  # rate limits swallow the dead Redis too
    assert time.perf_counter() - started < 2.5
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "workers online (broker not answering)" in html
    assert "No run in the last 24 hours." in html
