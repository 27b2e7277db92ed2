"""GET /data envelope, filters and paging; GET /health; OpenAPI and docs are served."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from shared.config import Settings, load_settings
from tests.helpers.csv_runs import HEADER, only_file, run_csv


def _load_coins(engine: Engine, settings: Settings, csv_dir: Path, coins: int) -> None:
    lines = [f"{i},Coin{i},C{i},2021-01-01 23:59:59,2,1,1,1.{i},10,100\n" for i in range(coins)]
    only_file(csv_dir, "many.csv", HEADER + "".join(lines))
    assert run_csv(engine, settings)["inserted"] == coins


def test_data_envelope_paging_and_filters(
    clean_db: Engine, client: Any, settings: Settings, csv_dir: Path
) -> None:
    _load_coins(clean_db, settings, csv_dir, 7)
    response = client.get("/data?page=2&page_size=3&total=true",
                          headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "abc-123"
    body = response.get_json()
    assert body["request_id"] == "abc-123" and body["api_latency_ms"] >= 0
    pagination = body["pagination"]
    assert pagination.pop("next_cursor")
    assert pagination == {"page": 2, "page_size": 3, "total": 7, "total_pages": 3}
    assert [r["symbol"] for r in body["data"]] == ["C3", "C4", "C5"]
    assert set(body["data"][0]) == {
        "asset_id", "symbol", "name", "source", "source_asset_id", "price_usd",
        "market_cap_usd", "volume_24h_usd", "rank", "observed_at", "quality"}
    assert body["data"][0]["quality"] == {"status": "ok", "flags": []}
    assert body["data"][0]["price_usd"] == "1.3"
    assert body["data"][0]["observed_at"] == "2021-01-01T23:59:59+00:00"

    # Without `total=true` nothing is counted: the totals are null, the page the same.
    uncounted = client.get("/data?page=2&page_size=3").get_json()
    assert uncounted["pagination"]["total"] is None
    assert uncounted["pagination"]["total_pages"] is None
    assert uncounted["data"] == body["data"]
    following = client.get(f"/data?page_size=3&cursor={uncounted['pagination']['next_cursor']}")
    assert following.get_json()["pagination"]["total"] is None
    counted = client.get(f"/data?page_size=3&total=true&cursor="
                         f"{uncounted['pagination']['next_cursor']}").get_json()
    assert counted["pagination"]["total"] == 7 and counted["pagination"]["page"] is None
    assert client.get("/data?total=maybe").status_code == 422

    one = client.get("/data?symbol=c4").get_json()
    assert [r["name"] for r in one["data"]] == ["Coin4"]
    assert client.get("/data?source=coingecko&total=true").get_json()["pagination"][
        "total"] == 0
    generated = client.get("/data").headers["X-Request-ID"]
    assert len(generated) == 32


def test_data_rejects_bad_arguments_with_422_naming_the_field(client: Any) -> None:
    for query, field in [("page_size=100000", "page_size"), ("page=0", "page"),
                         ("source=binance", "source"), ("page=abc", "page")]:
        response = client.get(f"/data?{query}")
        assert response.status_code == 422, query
        body = response.get_json()
        assert body["code"] == 422 and field in body["errors"]["query"]


def test_unknown_route_and_job_are_404_json(client: Any, clean_db: Engine) -> None:
    for path in ("/nope", "/jobs/999999"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.get_json()["code"] == 404


def test_health_degraded_without_workers_then_down_when_broker_unreachable(
    clean_db: Engine, client: Any, base_env: dict[str, str], csv_dir: Path
) -> None:
    # Database and broker answer, but no worker runs in this test and no source ever ran.
    body = client.get("/health").get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert body["checks"]["freshness"]["ok"] is False

    from api import create_app

    broken = load_settings({**base_env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    response = create_app({"TESTING": True}, settings=broken).test_client().get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "down"
    assert body["checks"]["broker"]["ok"] is False and body["checks"]["database"]["ok"]


def test_openapi_and_docs_are_served(client: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    assert {"/data", "/data/{asset}", "/data/{asset}/history", "/raw/{source}",
            "/raw/{source}/{record_id}", "/jobs", "/jobs/{job_id}", "/runs", "/runs/{run_id}",
            "/runs/compare", "/stats", "/health", "/health/live", "/health/ready",
            } <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert client.get("/docs").status_code == 200
