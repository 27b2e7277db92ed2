"""All three sources through a real worker against the replay upstream: one identity per coin,
exact decimals end to end, incremental re-runs, and a failing source leaving the job partial."""
from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tests.conftest import ALL_RAW, ROOT, count
from tests.helpers.waiting import wait_for_job
from tests.upstream import ReplayUpstream

pytestmark = pytest.mark.e2e

PAGE = json.loads(
    (ROOT / "tests/fixtures/coingecko/coins_markets_usd_page1_per250_2025-02-09.json").read_text(),
    parse_float=Decimal, parse_int=Decimal,
)
CSV_ROWS = 2991 + 3776 + 399


@pytest.fixture
def source_env(upstream: ReplayUpstream, csv_dir: Path) -> dict[str, str]:
    """Worker environment pointing every source at the replay upstream and the CSV copy."""
    return {
        "COINGECKO_BASE_URL": upstream.coingecko_base_url,
        "COINPAPRIKA_BASE_URL": upstream.coinpaprika_base_url,
        "COINGECKO_RATE_LIMIT": "1000", "COINPAPRIKA_RATE_LIMIT": "1000",
        "HTTP_TIMEOUT_SECONDS": "3", "HTTP_MAX_RETRIES": "2", "HTTP_BACKOFF_MAX_SECONDS": "1",
        "CSV_DIR": str(csv_dir),
    }


def _job(client: Any, auth: dict[str, str], sources: list[str] | None = None) -> dict[str, Any]:
    body = {"sources": sources} if sources else {}
    response = client.post("/jobs", json=body, headers=auth)
    assert response.status_code == 202, response.get_json()
    return wait_for_job(client, response.get_json()["id"], timeout=120)


def _runs(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {run["source"]: run for run in job["runs"]}


def test_three_sources_side_by_side_exact_and_incremental(
    clean_db: Engine, client: Any, auth_headers: dict[str, str], worker_factory: Any,
    upstream: ReplayUpstream, source_env: dict[str, str],
) -> None:
    worker_factory(source_env, concurrency=3)
    job = _job(client, auth_headers)
    assert job["status"] == "succeeded", job
    runs = _runs(job)
    assert {s: (r["status"], r["fetched"], r["inserted"], r["rejected"]) for s, r in runs.items()} \
        == {"coingecko": ("succeeded", 250, 250, 0),
            "coinpaprika": ("succeeded", 2000, 2000, 0),
            "csv": ("succeeded", CSV_ROWS, CSV_ROWS, 0)}
    assert runs["coingecko"]["http_requests"] == 2  # the full page, then the empty one

    # One asset per real coin, the three sources side by side.
    for symbol, slug in (("BTC", "bitcoin"), ("ETH", "ethereum"), ("USDT", "tether")):
        rows = client.get(f"/data?symbol={symbol}&page_size=100").get_json()["data"]
        gecko = next(r for r in rows if r["source_asset_id"] == slug)
        same = {r["source"] for r in rows if r["asset_id"] == gecko["asset_id"]}
        expected = {"coingecko", "coinpaprika", "csv"} if symbol == "BTC" else \
            {"coingecko", "coinpaprika"}
        assert same == expected, (symbol, rows)
    with clean_db.connect() as conn:
        per_symbol = dict(conn.execute(text(
            "SELECT a.symbol, count(DISTINCT a.id) FROM assets a JOIN asset_source_ids m "
            "ON m.asset_id = a.id AND m.source = 'coingecko' GROUP BY a.symbol")).all())
    assert (per_symbol["WETH"], per_symbol["WBTC"], per_symbol["USDT"], per_symbol["DOGE"]) \
        == (5, 3, 2, 2)

    # Every numeric field of every recorded item, stored and served as the upstream decimal.
    served = {r["source_asset_id"]: r for r in client.get(
        "/data?source=coingecko&page_size=500").get_json()["data"]}
    assert len(served) == 250
    api_fields = {"price_usd": "current_price", "market_cap_usd": "market_cap",
                  "volume_24h_usd": "total_volume"}
    db_fields = {"circulating_supply": "circulating_supply", "total_supply": "total_supply",
                 "max_supply": "max_supply", "high_usd": "high_24h", "low_usd": "low_24h",
                 "rank": "market_cap_rank"}
    with clean_db.connect() as conn:
        stored = {row.source_asset_id: row for row in conn.execute(text(
            "SELECT * FROM quotes WHERE source = 'coingecko'"))}
    compared = 0
    for item in PAGE:
        record, row = served[item["id"]], stored[item["id"]]
        for ours, theirs in api_fields.items():
            expected_value = item[theirs]
            got = record[ours]
            assert (got is None and expected_value is None) or \
                Decimal(got) == expected_value, (item["id"], ours, got, expected_value)
            compared += 1
        for ours, theirs in db_fields.items():
            got = getattr(row, ours)
            assert got == item[theirs], (item["id"], ours, got, item[theirs])
            compared += 1
    assert compared == 250 * 9

    # Nothing new upstream: nothing written.
    before = {t: count(clean_db, t) for t in (ALL_RAW, "quotes", "assets")}
    again = _runs(_job(client, auth_headers))
    assert {s: r["inserted"] for s, r in again.items()} == \
        {"coingecko": 0, "coinpaprika": 0, "csv": 0}
    assert {t: count(clean_db, t) for t in before} == before

    # Ten coins move: exactly ten new CoinGecko quotes.
    assert upstream.advance(60, "coingecko", first=10) == 10
    moved = _runs(_job(client, auth_headers, ["coingecko"]))["coingecko"]
    assert (moved["inserted"], moved["unchanged"]) == (10, 240)


def test_f9_failing_source_leaves_job_partial_then_resumes(
    clean_db: Engine, client: Any, auth_headers: dict[str, str], worker_factory: Any,
    upstream: ReplayUpstream, source_env: dict[str, str],
) -> None:
    worker_factory(source_env, concurrency=3)
    upstream.add_fault("401", endpoint="coingecko")
    job = _job(client, auth_headers)
    assert job["status"] == "partial"
    runs = _runs(job)
    assert runs["coingecko"]["status"] == "failed"
    assert "401" in runs["coingecko"]["error"]
    assert (runs["coinpaprika"]["status"], runs["csv"]["status"]) == ("succeeded", "succeeded")
    assert count(clean_db, "quotes", "source = 'coingecko'") == 0
    assert count(clean_db, "quotes", "source = 'coinpaprika'") == 2000
    assert count(clean_db, "current_quotes", "source = 'csv'") == 1  # normalize still ran

    upstream.clear_faults()
    resumed = _runs(_job(client, auth_headers))
    assert resumed["coingecko"]["status"] == "succeeded"
    assert resumed["coingecko"]["inserted"] == 250
    assert (resumed["coinpaprika"]["inserted"], resumed["csv"]["inserted"]) == (0, 0)


def test_f28_same_item_on_two_pages_is_stored_once(
    clean_db: Engine, client: Any, auth_headers: dict[str, str], worker_factory: Any,
    upstream: ReplayUpstream, source_env: dict[str, str],
) -> None:
    # 600 coins, and each page after the first starts 7 items early (a rank shift while
    # paging): 14 items are served twice, some with equal timestamps across the boundary.
    upstream.reset(coingecko_total=600, coingecko_page_overlap=7)
    worker_factory(source_env, concurrency=1)
    run = _runs(_job(client, auth_headers, ["coingecko"]))["coingecko"]
    assert run["status"] == "succeeded"
    assert run["http_requests"] == 3  # 250 + 250 + the short last page
    assert count(clean_db, "quotes", "source = 'coingecko'") == 600
    with clean_db.connect() as conn:
        dups = conn.execute(text(
            "SELECT count(*) - count(DISTINCT source_asset_id) FROM quotes "
            "WHERE source = 'coingecko'")).scalar_one()
    assert dups == 0
    assert count(clean_db, "raw_items", "source = 'coingecko'") == 600
