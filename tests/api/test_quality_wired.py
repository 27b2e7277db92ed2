"""Quality flags, windowed consensus and anomalies through the real ingest path and the API."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from shared.quality.anomalies import AnomalyThresholds
from shared.config import load_settings
from shared.jobs.close import finalize_job
from tests.api.helpers import replay_settings, run_sources
from tests.helpers.runs import add_run_in_series
from tests.upstream import ReplayUpstream
from tests.upstream.server import split_array

from tests.conftest import ROOT  # noqa: E402
PAGE_2022 = ROOT / "tests/fixtures/coingecko/coins_markets_usd_page1_per250_pcp-all_2022-02-23.json"
KAGGLE_HEAD = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap\n"


def _app(settings: Any) -> Any:
    from api import create_app

    return create_app({"TESTING": True, "RATELIMIT_ENABLED": False},
                      settings=settings).test_client()


def _csv_dir(tmp_path: Path, body: str) -> Path:
    """A CSV folder with one Kaggle-format file and the project's alias file."""
    folder = tmp_path / "csv"
    folder.mkdir()
    shutil.copy(ROOT / "data/asset_aliases.csv", folder / "asset_aliases.csv")
    (folder / "coins.csv").write_text(KAGGLE_HEAD + body)
    return folder


def _quality(engine: Engine, slug: str, source: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT c.quality FROM current_quotes c JOIN assets a ON a.id = c.asset_id "
            "WHERE a.slug = :slug AND c.source = :source"), {"slug": slug, "source": source}
        ).scalar_one()


def test_2022_page_bogus_coin_is_flagged_and_never_tops_the_sort_unmarked(
        clean_db: Engine, base_env: dict[str, str], tmp_path: Path) -> None:
    server = ReplayUpstream().start()
    try:
        server.state.coingecko_items = list(split_array(PAGE_2022.read_text()))
        settings = replay_settings(base_env, _csv_dir(tmp_path, ""), server)
        job = run_sources(clean_db, settings, ["coingecko"])
    finally:
        server.stop()
    assert job["status"] == "succeeded", job
    bogus = _quality(clean_db, "ticoex-token", "coingecko")
    assert bogus["status"] == "flagged"
    assert "implausible" in {f["flag"] for f in bogus["flags"]}
    for slug in ("bitcoin", "ethereum", "tether"):
        assert _quality(clean_db, slug, "coingecko") is None, slug
    client = _app(settings)
    top = client.get("/data?sort=-market_cap_usd&page_size=500").get_json()["data"]
    assert top[0]["source_asset_id"] == "bitcoin" and top[0]["quality"]["status"] == "ok"
    states = [r["quality"]["status"] for r in top]
    # Clean first, then flagged: the $3.3T coin comes after every clean quote, marked.
    assert states == sorted(states, key=lambda s: s != "ok")
    bogus_row = next(r for r in top if r["source_asset_id"] == "ticoex-token")
    assert bogus_row["quality"]["flags"][0]["evidence"]["rule"]
    flagged = client.get("/data?quality=flagged&page_size=500").get_json()["data"]
    assert "ticoex-token" in {r["source_asset_id"] for r in flagged}
    assert all(r["quality"]["status"] == "flagged" for r in flagged)
    ok = client.get("/data?quality=ok&page_size=500&total=true").get_json()
    assert ok["pagination"]["total"] + len(flagged) == len(top)
    found = client.get("/anomalies?kind=implausible&source=coingecko").get_json()["data"]
    assert any(a["evidence"]["asset_id"] and a["key"].startswith("quote:") for a in found)
    # Identity: flags never merge or split assets: one asset per coin of the page.
    with clean_db.connect() as conn:
        assets = conn.execute(text("SELECT count(*) FROM assets")).scalar_one()
        coins = conn.execute(text(
            "SELECT count(DISTINCT source_asset_id) FROM current_quotes")).scalar_one()
        quotes = conn.execute(text("SELECT count(*) FROM current_quotes")).scalar_one()
    assert assets == coins == quotes == 250


def test_keyset_pages_under_the_clean_first_rule_cover_every_row_once(
        clean_db: Engine, base_env: dict[str, str], tmp_path: Path) -> None:
    server = ReplayUpstream().start()
    try:
        server.state.coingecko_items = list(split_array(PAGE_2022.read_text()))
        settings = replay_settings(base_env, _csv_dir(tmp_path, ""), server)
        run_sources(clean_db, settings, ["coingecko"])
    finally:
        server.stop()
    client = _app(settings)
    for sort in ("-market_cap_usd", "price_usd", "-volume_24h_usd"):
        whole = client.get(f"/data?sort={sort}&page_size=500").get_json()["data"]
        seen: list[Any] = []
        url = f"/data?sort={sort}&page_size=7"
        while url:
            body = client.get(url).get_json()
            seen += body["data"]
            cursor = body["pagination"]["next_cursor"]
            url = f"/data?sort={sort}&page_size=7&cursor={cursor}" if cursor else ""
        assert [(r["asset_id"], r["source"]) for r in seen] == \
            [(r["asset_id"], r["source"]) for r in whole], sort


def test_year_old_quote_stays_out_of_todays_consensus(
        clean_db: Engine, base_env: dict[str, str], tmp_path: Path) -> None:
    # CoinGecko's BTC is of 2025-02-09, CoinPaprika's recorded ticker of 2022-01-30.
    server = ReplayUpstream().start()
    try:
        settings = replay_settings(base_env, _csv_dir(tmp_path, ""), server)
        run_sources(clean_db, settings, ["coingecko", "coinpaprika"])
    finally:
        server.stop()
    consensus = _app(settings).get("/data/bitcoin").get_json()["consensus"]
    assert consensus["sources"] == ["coingecko"] and consensus["single_source"] is True
    assert consensus["disagree"] is False
    assert [(e["source"], e["reason"]) for e in consensus["excluded"]] == [
        ("coinpaprika", "out_of_window")]
    assert consensus["window"]["seconds"] == 3600


def test_a_doctored_csv_quote_20_percent_off_is_an_outlier(
        clean_db: Engine, base_env: dict[str, str], tmp_path: Path) -> None:
    # CoinGecko and the coherent CoinPaprika agree on BTC at 2025-02-09 ~17:4x; a CSV close
    # of the same hour 20% above them is the outlier.
    server = ReplayUpstream(coinpaprika_coherent=True).start()
    try:
        row = "1,Bitcoin,BTC,2025-02-09 17:30:00,120000,90000,96000,115000,1000000000,2.2e12\n"
        settings = replay_settings(base_env, _csv_dir(tmp_path, row), server)
        run_sources(clean_db, settings, ["coingecko", "coinpaprika", "csv"])
    finally:
        server.stop()
    csv_quality = _quality(clean_db, "bitcoin", "csv")
    assert [f["flag"] for f in csv_quality["flags"]] == ["outlier"]
    assert csv_quality["flags"][0]["evidence"]["deviation_pct"] > 10
    assert _quality(clean_db, "bitcoin", "coingecko") is None
    consensus = _app(settings).get("/data/bitcoin").get_json()["consensus"]
    assert consensus["sources"] == ["coingecko", "coinpaprika"]
    assert consensus["disagree"] is False
    assert consensus["excluded"][0]["reason"] == "flagged"
    # Identity: the flagged CSV quote stays on the one bitcoin asset, beside the clean ones.
    with clean_db.connect() as conn:
        rows = conn.execute(text(
            "SELECT a.slug, c.source FROM current_quotes c JOIN assets a ON a.id = c.asset_id "
            "WHERE a.symbol = 'BTC' ORDER BY c.source")).all()
    assert [tuple(r) for r in rows] == [("bitcoin", "coingecko"), ("bitcoin", "coinpaprika"),
                                        ("bitcoin", "csv")]


def test_a_csv_price_jumping_100x_overnight_is_a_jump_in_data_and_history(
        clean_db: Engine, base_env: dict[str, str], tmp_path: Path) -> None:
    rows = "".join(
        f"{n},Jumpcoin,JMP,2021-01-0{n} 23:59:59,2,1,1,{price},10,{price}00\n"
        for n, price in ((1, "1.0"), (2, "1.05"), (3, "105.0"), (4, "1.1")))
    settings = load_settings({**base_env, "CSV_DIR": str(_csv_dir(tmp_path, rows))})
    run_sources(clean_db, settings, ["csv"])
    client = _app(settings)
    record = client.get("/data?symbol=JMP").get_json()["data"][0]
    assert record["quality"]["status"] == "flagged"
    assert record["quality"]["flags"][0]["flag"] == "jump"
    assert record["quality"]["flags"][0]["evidence"]["factor"] > 95  # back down: 105 -> 1.1
    history = client.get(f"/data/{record['asset_id']}/history?since=2021-01-01T00:00:00Z"
                         "&until=2021-01-31T00:00:00Z").get_json()["data"]
    assert [h["quality"]["status"] for h in history] == ["flagged", "flagged", "ok", "ok"]
    up = history[1]["quality"]["flags"][0]["evidence"]
    assert abs(up["factor"] - 100) < 1e-9 and up["previous_price_usd"] == 1.05
    # One anomaly for the coin's jumps in this batch: the first, and how many there were.
    found = client.get("/anomalies?source=csv").get_json()["data"]
    assert [(a["kind"], a["evidence"]["quotes"]) for a in found] == [("jump", 2)]
    assert found[0]["observed_at"].startswith("2021-01-03")


def test_run_anomalies_are_recorded_when_a_job_closes_once_each(
        clean_db: Engine, settings: Any) -> None:
    t = AnomalyThresholds()

    def close_with(**run: Any) -> int:
        with clean_db.begin() as conn:
            run_id = add_run_in_series(conn, "coingecko", **run)
            job_id = conn.execute(text("SELECT job_id FROM runs WHERE id = :r"),
                                  {"r": run_id}).scalar_one()
            conn.execute(text("UPDATE jobs SET status = 'running' WHERE id = :j"),
                         {"j": job_id})
        with Session(clean_db) as session, session.begin():
            finalize_job(session, job_id, t)
        return run_id

    with clean_db.begin() as conn:
        for n in range(8):
            add_run_in_series(conn, "coingecko", inserted=250 + n, seconds=10 + n % 3)
    few = close_with(inserted=25)
    close_with(inserted=251, seconds=11)
    slow = close_with(seconds=110)
    fails = [close_with(status="failed", inserted=0, fetched=0, error=f"HTTP 503 #{n}")
             for n in range(3)]
    close_with(status="failed", inserted=0, fetched=0, error="again")
    client = _app(settings)
    body = client.get("/anomalies?source=coingecko").get_json()
    got = sorted((a["kind"], a["run_id"]) for a in body["data"])
    assert got == sorted([("inserted_low", few), ("duration_high", slow),
                          ("failure_streak", fails[-1])])
    for anomaly in body["data"]:
        assert {"value", "rule"} <= set(anomaly["evidence"])
    assert body["pagination"]["total"] == 3
    page = client.get("/anomalies?source=coingecko&page_size=2").get_json()
    rest = client.get(f"/anomalies?cursor={page['pagination']['next_cursor']}&page_size=2"
                      "&source=coingecko").get_json()
    assert len(page["data"]) + len(rest["data"]) == 3
    assert client.get("/anomalies?kind=drift").get_json()["data"] == []
    assert client.get("/anomalies?since=2999-01-01T00:00:00Z").get_json()["data"] == []
    bad = client.get("/anomalies?kind=nope")
    assert bad.status_code == 422 and "kind" in bad.get_json()["errors"]["query"]
    stats = client.get("/stats").get_json()
    assert stats["totals"]["anomalies"] == 3
    gecko = next(s for s in stats["sources"] if s["source"] == "coingecko")
    assert gecko["anomalies"] == {"duration_high": 1, "failure_streak": 1, "inserted_low": 1}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'kasparro_anomalies_total{kind="inserted_low",source="coingecko"} 1.0' in metrics


def test_2025_page_coins_hours_behind_their_page_are_stale_the_rest_clean(
        clean_db: Engine, base_env: dict[str, str], tmp_path: Path) -> None:
    server = ReplayUpstream().start()
    try:
        settings = replay_settings(base_env, _csv_dir(tmp_path, ""), server)
        run_sources(clean_db, settings, ["coingecko"])
    finally:
        server.stop()
    client = _app(settings)
    flagged = client.get("/data?quality=flagged&source=coingecko&page_size=500").get_json()
    stale = {r["source_asset_id"]: r["quality"]["flags"] for r in flagged["data"]
             if "stale" in {f["flag"] for f in r["quality"]["flags"]}}
    assert set(stale) == {"hashnote-usyc", "resolv-wstusr"}
    evidence = next(f for f in stale["resolv-wstusr"] if f["flag"] == "stale")["evidence"]
    assert evidence["age_seconds"] > 86400 and evidence["threshold_seconds"] == 3600
    detail = client.get("/data/bitcoin").get_json()
    assert [q["quality"] for q in detail["quotes"]] == [{"status": "ok", "flags": []}]
    assert detail["consensus"]["single_source"] is True
    found = client.get("/anomalies?kind=stale").get_json()
    assert found["pagination"]["total"] == 2
