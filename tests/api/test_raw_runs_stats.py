"""GET /raw, /runs, /runs/compare and /stats on data loaded through the real pipeline."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from shared.config import Settings, load_settings
from tests.api.helpers import coins_csv, run_sources
from tests.conftest import ALL_RAW, count
from tests.helpers.csv_runs import HEADER, only_file, run_csv
from tests.helpers.raw_items import stored_items
from tests.upstream import ReplayUpstream


def _get(client: Any, url: str, status: int = 200) -> dict[str, Any]:
    response = client.get(url)
    assert response.status_code == status, (url, response.get_json())
    body: dict[str, Any] = response.get_json()
    return body


def test_raw_lists_detail_and_cursor(
    clean_db: Engine, all_sources: dict[str, Any], client: Any
) -> None:
    listing = _get(client, "/raw/coingecko?page_size=100")
    assert listing["pagination"]["total"] == 250
    ids: list[int] = []
    body = listing
    while True:
        ids.extend(r["id"] for r in body["data"])
        cursor = body["pagination"]["next_cursor"]
        if cursor is None:
            break
        body = _get(client, f"/raw/coingecko?page_size=100&cursor={cursor}")
    assert len(ids) == len(set(ids)) == 250 and ids == sorted(ids, reverse=True)

    record = listing["data"][0]
    assert set(record) == {"id", "source", "source_key", "payload", "fetched_at", "run_id",
                           "content_hash"}
    assert json.loads(record["payload"])["id"]
    assert len(record["content_hash"]) == 64 and int(record["content_hash"], 16) >= 0
    with clean_db.connect() as conn:
        (stored,) = [i for i in stored_items(conn, "source = 'coingecko'")
                     if i.id == record["id"]]
    assert bytes(stored.content_hash).hex() == record["content_hash"]
    assert stored.payload == record["payload"]
    assert _get(client, f"/raw/coingecko/{record['id']}") == record

    csv_run = next(r for r in all_sources["runs"] if r["source"] == "csv")
    csv_rows = _get(client, f"/raw/csv?run_id={csv_run['id']}&page_size=1")
    assert csv_rows["pagination"]["total"] == count(clean_db, "raw_lines", "source = 'csv'")
    line = csv_rows["data"][0]
    assert "," in line["payload"] and ".csv:" in line["source_key"]
    assert _get(client, f"/raw/csv?run_id={csv_run['id'] + 100}")["pagination"]["total"] == 0

    # The record exists, but under another source: 404, as for unknown sources and ids.
    for path in (f"/raw/csv/{record['id']}", "/raw/binance", "/raw/binance/1",
                 "/raw/coingecko/999999999", "/raw/coingecko/0", "/raw/coingecko/-1",
                 "/raw/coingecko/99999999999999999999999"):
        body = _get(client, path, 404)
        assert body["code"] == 404 and body["message"]
    bad_cursor = _get(client, f"/raw/csv?cursor={listing['pagination']['next_cursor']}", 422)
    assert "cursor" in bad_cursor["errors"]["query"]


def test_runs_list_filters_detail_and_paging(
    clean_db: Engine, all_sources: dict[str, Any], client: Any
) -> None:
    body = _get(client, "/runs")
    assert body["pagination"]["total"] == 3
    assert [r["source"] for r in body["data"]] == ["csv", "coinpaprika", "coingecko"]
    run = body["data"][0]
    assert run["status"] == "succeeded" and run["duration_ms"] > 0
    assert run["fetched"] == run["inserted"] == run["raw_inserted"] == 7166
    assert _get(client, f"/runs/{run['id']}") == run

    assert [r["source"] for r in _get(client, "/runs?source=coinpaprika")["data"]] == [
        "coinpaprika"]
    assert _get(client, "/runs?status=failed")["pagination"]["total"] == 0
    assert _get(client, "/runs?status=succeeded")["pagination"]["total"] == 3
    assert _get(client, f"/runs?job_id={all_sources['id']}")["pagination"]["total"] == 3
    assert _get(client, "/runs?since=2999-01-01")["pagination"]["total"] == 0
    assert _get(client, "/runs?until=2000-01-01")["pagination"]["total"] == 0
    assert _get(client, "/runs?since=2000-01-01&until=2999-01-01")["pagination"]["total"] == 3

    seen = []
    page = _get(client, "/runs?page_size=1")
    while True:
        seen.extend(r["id"] for r in page["data"])
        if page["pagination"]["next_cursor"] is None:
            break
        page = _get(client, f"/runs?page_size=1&cursor={page['pagination']['next_cursor']}")
    assert seen == sorted({r["id"] for r in all_sources["runs"]}, reverse=True)

    for path in ("/runs/999999", "/runs/0", "/runs/abc"):
        assert _get(client, path, 404)["code"] == 404


def test_runs_compare_counts_durations_and_sources(
    clean_db: Engine, client: Any, settings: Settings, csv_dir: Path
) -> None:
    path = only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 10))
    first = run_csv(clean_db, settings)
    with path.open("a") as handle:
        handle.write(coins_csv(1, 4, day=2) + "bad,line\n")
    second = run_csv(clean_db, settings)
    body = _get(client, f"/runs/compare?a={first['id']}&b={second['id']}")
    assert body["a"]["id"] == first["id"] and body["b"]["id"] == second["id"]
    assert body["same_source"] is True
    diff = body["difference"]
    assert (diff["fetched"], diff["inserted"], diff["rejected"]) == (5 - 10, 4 - 10, 1)
    assert diff["duration_ms"] == pytest.approx(
        body["b"]["duration_ms"] - body["a"]["duration_ms"], abs=0.2)
    (csv_row,) = body["per_source"]
    assert csv_row["source"] == "csv" and csv_row["difference"] == diff

    for query, field in (("a=1", "b"), ("a=x&b=1", "a"), ("a=0&b=1", "a")):
        assert field in _get(client, f"/runs/compare?{query}", 422)["errors"]["query"]
    assert _get(client, f"/runs/compare?a={first['id']}&b=999999", 404)["code"] == 404


def test_runs_compare_within_one_job_does_not_compare_runs_with_themselves(
    clean_db: Engine, client: Any, api_settings: Settings, csv_dir: Path
) -> None:
    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 3))
    job = run_sources(clean_db, api_settings, ["coingecko", "csv"])
    a, b = job["runs"]
    body = _get(client, f"/runs/compare?a={a['id']}&b={b['id']}")
    assert body["same_job"] is True and body["job_a"] == body["job_b"] == job["id"]
    assert body["same_source"] is False
    # Before: per_source paired the job with itself, every run with itself (all zeros).
    assert body["per_source"] == []
    assert body["difference"]["inserted"] == b["inserted"] - a["inserted"] != 0


def test_runs_compare_across_jobs_per_source(
    clean_db: Engine, client: Any, api_settings: Settings, csv_dir: Path
) -> None:
    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 3))
    one = run_sources(clean_db, api_settings, ["coingecko", "csv"])
    two = run_sources(clean_db, api_settings, ["coingecko", "coinpaprika"])
    a = next(r for r in one["runs"] if r["source"] == "coingecko")
    b = next(r for r in two["runs"] if r["source"] == "coingecko")
    body = _get(client, f"/runs/compare?a={a['id']}&b={b['id']}")
    assert body["same_job"] is False
    assert (body["job_a"], body["job_b"]) == (one["id"], two["id"])
    per_source = {row["source"]: row for row in body["per_source"]}
    assert set(per_source) == {"coingecko", "coinpaprika", "csv"}
    # Each pair is the same source, one run from each job.
    for row in body["per_source"]:
        for side, job in (("a", one), ("b", two)):
            if row[side] is not None:
                assert row[side]["source"] == row["source"]
                assert row[side]["job_id"] == job["id"]
    # Nothing new upstream: the second CoinGecko run inserts nothing.
    assert per_source["coingecko"]["difference"]["inserted"] == -250
    assert per_source["csv"]["b"] is None and per_source["csv"]["difference"] is None
    assert per_source["coinpaprika"]["a"] is None
    assert per_source["coinpaprika"]["b"]["inserted"] == 2000


def test_stats_layers_runs_outcomes_and_checkpoints(
    clean_db: Engine, all_sources: dict[str, Any], client: Any, settings: Settings,
    base_env: dict[str, str], csv_dir: Path,
) -> None:
    stats = _get(client, "/stats")
    for layer, table in (("raw", ALL_RAW), ("quotes", "quotes"),
                         ("current", "current_quotes"), ("source_ids", "asset_source_ids"),
                         ("rejected", "rejected_records")):
        for source in ("coingecko", "coinpaprika", "csv"):
            expected = count(clean_db, table, "source = :s", s=source)
            assert stats["records"][layer].get(source, 0) == expected, (layer, source)
        # Additive layers: the total is the sum over sources.
        assert stats["totals"][layer] == sum(stats["records"][layer].values()), layer
    for source in ("coingecko", "coinpaprika", "csv"):
        distinct = count(clean_db, "(SELECT DISTINCT asset_id FROM asset_source_ids "
                         "WHERE source = :s) AS ids", s=source)
        assert stats["records"]["assets"][source] == distinct
        # No source knows more canonical assets than exist.
        assert stats["records"]["assets"][source] <= stats["totals"]["assets"]
    assert stats["totals"]["assets"] == count(clean_db, "assets")
    assert set(stats["layers"]) == set(stats["records"]) == (
        set(stats["totals"]) - {"runs", "anomalies"})
    assert stats["totals"]["quotes"] == count(clean_db, "quotes") == 9416
    assert stats["runs_by_status"]["succeeded"] == 3 and stats["totals"]["runs"] == 3
    by_source = {s["source"]: s for s in stats["sources"]}
    for source, entry in by_source.items():
        run = next(r for r in all_sources["runs"] if r["source"] == source)
        assert entry["last_success"]["run_id"] == run["id"]
        assert entry["last_failure"] is None
        assert entry["average_duration_ms"] > 0
        assert entry["runs_by_status"]["succeeded"] == 1
    assert {(c["source"], c["key"]) for c in stats["checkpoints"]} >= {
        ("coingecko", "markets"), ("csv", "kaggle_srk_coin_Bitcoin.csv")}

    # A failing run and rejected rows show up as last failure and reject reasons.
    only_file(csv_dir, "broken.csv", HEADER + coins_csv(1, 6) + "x,y\n" + "z,w\n")
    failing = load_settings({**base_env, "CSV_DIR": str(csv_dir),
                             "FAIL_AFTER_N_RECORDS_CSV": "3", "CSV_BATCH_ROWS": "2"})
    failed = run_csv(clean_db, failing)
    assert failed["status"] == "failed"
    resumed = run_csv(clean_db, settings)
    assert resumed["status"] == "succeeded"
    stats = _get(client, "/stats")
    csv_stats = {s["source"]: s for s in stats["sources"]}["csv"]
    assert csv_stats["last_failure"]["run_id"] == failed["id"]
    assert "FAIL_AFTER_N_RECORDS" in csv_stats["last_failure"]["error"]
    assert csv_stats["last_success"]["run_id"] == resumed["id"]
    assert csv_stats["runs_by_status"]["failed"] == 1
    assert stats["runs_by_status"]["failed"] == 1
    assert csv_stats["records"]["rejected"] == 2
    assert csv_stats["top_reject_reasons"] == [
        {"reason": "expected 10 columns, got 2", "count": 2}]


def test_stats_asset_counts_agree_for_one_coin_in_three_csv_formats(
    clean_db: Engine, client: Any, settings: Settings
) -> None:
    """The BTC files of data/ (Kaggle, CoinGecko and CoinMarketCap exports) give the csv
    source two ids of one coin (the issue's `records.assets.csv=2` against
    `totals.assets=1`): `assets` now says 1 per source and in total, `source_ids` says 2."""
    assert run_csv(clean_db, settings)["status"] == "succeeded"
    stats = _get(client, "/stats")
    assert count(clean_db, "assets") == 1
    assert stats["records"]["source_ids"]["csv"] == count(clean_db, "asset_source_ids") == 2
    assert stats["totals"]["source_ids"] == 2
    assert stats["records"]["assets"]["csv"] == stats["totals"]["assets"] == 1
    csv_entry = {s["source"]: s for s in stats["sources"]}["csv"]
    assert csv_entry["records"]["assets"] == 1 and csv_entry["records"]["source_ids"] == 2
    assert "not the sum" in stats["layers"]["assets"]


def test_stats_surface_schema_drift(
    clean_db: Engine, client: Any, api_settings: Settings, upstream: ReplayUpstream
) -> None:
    upstream.add_fault("drift", endpoint="coingecko", page=1,
                       rename={"current_price": "price"}, retype={"market_cap": "string"})
    job = run_sources(clean_db, api_settings, ["coingecko"])
    assert job["status"] == "succeeded"
    stats = _get(client, "/stats")
    coingecko = {s["source"]: s for s in stats["sources"]}["coingecko"]
    assert coingecko["drift"]["mapped"] == count(clean_db, "drift_events", "mapped") >= 2
    assert coingecko["drift"]["unmapped"] == 0
    kinds = {(e["kind"], e["field"], e["mapped"]) for e in stats["recent_drift"]}
    assert ("renamed", "current_price", True) in kinds
    assert all(0 <= e["confidence"] <= 1 for e in stats["recent_drift"])


def test_one_csv_line_by_id_is_cut_out_of_its_block(
    clean_db: Engine, all_sources: dict[str, Any], client: Any
) -> None:
    listing = _get(client, "/raw/csv?page_size=25")
    assert listing["data"]
    for line in listing["data"]:
        assert _get(client, f"/raw/csv/{line['id']}") == line
        with clean_db.connect() as conn:
            stored = conn.execute(text(
                "SELECT payload, content_hash, source_key FROM raw_lines WHERE id = :id"),
                {"id": line["id"]}).one()
        assert (stored.payload, bytes(stored.content_hash).hex(), stored.source_key) == (
            line["payload"], line["content_hash"], line["source_key"])
    # Past the last line of a block, and a block of another source: not found.
    with clean_db.connect() as conn:
        block_id, lines = conn.execute(text(
            "SELECT id, cardinality(line_numbers) FROM raw_line_blocks LIMIT 1")).one()
    assert _get(client, f"/raw/csv/{(block_id << 20) + lines}", 404)["code"] == 404
    assert _get(client, f"/raw/coingecko/{(block_id << 20)}", 404)["code"] == 404
