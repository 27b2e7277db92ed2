"""GET /anomalies names each data anomaly's coin and filters by asset id, slug or symbol."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.orm import Session

from shared.quality.anomalies import DRIFT, Anomaly, quote_anomalies, record_anomalies
from shared.config import Settings
from shared.quality.checks import make_flag
from shared.queries.anomalies import SYMBOL_ASSETS_MAX
from tests.api.helpers import replay_settings, run_sources
from tests.helpers.partitions import ensure_quote_partitions
from tests.upstream import ReplayUpstream
from tests.upstream.server import split_array

from tests.conftest import ROOT  # noqa: E402
PAGE_2022 = ROOT / "tests/fixtures/coingecko/coins_markets_usd_page1_per250_pcp-all_2022-02-23.json"
T0 = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
# (slug, symbol, name, [(source, its id for the coin, flag kind)]): two coins share a symbol,
# and one coin's slug is the others' symbol in lower case.
COINS = [
    ("ticoex-token", "TICO", "TICOEX Token",
     [("coingecko", "ticoex-token", "implausible"), ("coinpaprika", "tico-ticoex-token", "stale")]),
    ("usd-quid-a", "USDQ", "USD Quid (Avalanche)", [("coingecko", "usd-quid-a", "jump")]),
    ("usd-quid-b", "USDQ", "USD Quid (Base)", [("coingecko", "usd-quid-b", "outlier"),
                                               ("csv", "USD Quid", "jump")]),
    ("usdq", "UQ", "Usdq Protocol", [("coingecko", "usdq", "stale")]),
    ("bitcoin", "BTC", "Bitcoin", []),
]


def _record(engine: Engine, anomalies: list[Anomaly]) -> None:
    with Session(engine) as session, session.begin():
        assert record_anomalies(session, anomalies) == len(anomalies)


@pytest.fixture
def coins(clean_db: Engine) -> dict[str, int]:
    """The coins above with one quote per (source, flag) and its data anomaly, then a run one."""
    ids: dict[str, int] = {}
    at = T0
    for slug, symbol, name, flags in COINS:
        with clean_db.begin() as conn:
            ids[slug] = conn.execute(text(
                "INSERT INTO assets (slug, symbol, name) VALUES (:slug, :symbol, :name) "
                "RETURNING id"), {"slug": slug, "symbol": symbol, "name": name}).scalar_one()
        for source, source_asset_id, kind in flags:
            at += timedelta(minutes=5)
            ensure_quote_partitions(clean_db, at)
            with clean_db.begin() as conn:
                conn.execute(text(
                    "INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, "
                    "price_usd) VALUES (:a, :s, :t, :sid, 1)"),
                    {"a": ids[slug], "s": source, "t": at, "sid": source_asset_id})
            flag = make_flag(kind, f"{kind} in a test", value=1, rule="a test")
            _record(clean_db, quote_anomalies(source, ids[slug], at, [flag]))
    _record(clean_db, [Anomaly(DRIFT, "csv", "drift:1", None, T0, {"value": "x"})])
    return ids


def _get(client: Any, query: str = "") -> Any:
    answer = client.get(f"/anomalies{query}")
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def test_each_data_anomaly_names_its_coin_and_the_coins_id_at_the_source(
        client: Any, coins: dict[str, int]) -> None:
    body = _get(client, "?page_size=100")
    by_key = {(a["kind"], a["source"]): a for a in body["data"]}
    tico = {"id": coins["ticoex-token"], "slug": "ticoex-token", "symbol": "TICO",
            "name": "TICOEX Token"}
    gecko = by_key[("implausible", "coingecko")]
    assert gecko["asset"] == tico and gecko["source_asset_id"] == "ticoex-token"
    assert gecko["evidence"]["asset_id"] == tico["id"]  # the evidence is kept as it was
    paprika = by_key[("stale", "coinpaprika")]
    assert paprika["asset"] == tico and paprika["source_asset_id"] == "tico-ticoex-token"
    assert by_key[("jump", "csv")]["source_asset_id"] == "USD Quid"
    drift = by_key[("drift", "csv")]
    assert drift["asset"] is None and drift["source_asset_id"] is None
    assert all(a["asset"] is not None for a in body["data"] if a["key"].startswith("quote:"))
    # Read at request time: a coin renamed since shows its name now.
    with client.application.extensions["db_engine"].begin() as conn:
        conn.execute(text("UPDATE assets SET name = 'TICOEX' WHERE id = :id"), {"id": tico["id"]})
    again = _get(client, "?kind=implausible")["data"]
    assert [a["asset"]["name"] for a in again] == ["TICOEX"]


@pytest.mark.parametrize("ref", ["{id}", "ticoex-token", "TICOEX-Token", " ticoex-token ",
                                 "TICO", "tico"])
def test_filter_by_id_slug_or_symbol(client: Any, coins: dict[str, int], ref: str) -> None:
    body = _get(client, "?asset=" + ref.format(id=coins["ticoex-token"]))
    assert sorted((a["kind"], a["source"]) for a in body["data"]) == [
        ("implausible", "coingecko"), ("stale", "coinpaprika")]
    assert {a["asset"]["id"] for a in body["data"]} == {coins["ticoex-token"]}
    assert body["pagination"]["total"] == 2
    narrowed = _get(client, f"?asset={ref.format(id=coins['ticoex-token'])}&source=coinpaprika")
    assert [a["kind"] for a in narrowed["data"]] == ["stale"]


def test_an_exact_slug_wins_over_a_symbol_and_a_shared_symbol_names_every_coin_of_it(
        client: Any, coins: dict[str, int]) -> None:
    # `usdq` is one coin's slug: that coin only, not the two coins whose symbol is USDQ.
    assert [a["asset"]["slug"] for a in _get(client, "?asset=usdq")["data"]] == ["usdq"]
    # A slug in another case is taken only when it is no symbol.
    assert [a["asset"]["slug"] for a in _get(client, "?asset=UQ")["data"]] == ["usdq"]
    quid = {coins["usd-quid-a"], coins["usd-quid-b"]}
    whole = _get(client, "?asset=USDQ&page_size=100")
    ids = [a["id"] for a in whole["data"]]
    assert {a["asset"]["id"] for a in whole["data"]} == quid
    assert len(ids) == 3 and ids == sorted(ids, reverse=True)
    # Keyset pages through the merged ranges: each anomaly once, newest first.
    seen: list[int] = []
    url = "?asset=USDQ&page_size=1"
    while url:
        page = _get(client, url)
        assert page["pagination"]["total"] == 3
        seen += [a["id"] for a in page["data"]]
        cursor = page["pagination"]["next_cursor"]
        url = f"?asset=USDQ&page_size=1&cursor={cursor}" if cursor else ""
    assert seen == ids
    second = _get(client, "?asset=USDQ&page_size=2&page=2")
    assert [a["id"] for a in second["data"]] == ids[2:]
    assert [a["kind"] for a in _get(client, "?asset=usdq&kind=stale")["data"]] == ["stale"]
    assert _get(client, "?asset=USDQ&kind=stale")["data"] == []


@pytest.mark.parametrize("ref", ["no-such-coin", "999999", "NOPE"])
def test_an_unknown_asset_is_a_404_in_the_error_body(
        client: Any, coins: dict[str, int], ref: str) -> None:
    answer = client.get(f"/anomalies?asset={ref}")
    assert answer.status_code == 404
    body = answer.get_json()
    assert body["code"] == 404 and body["status"] == "Not Found"
    assert ref in body["message"]
    # A coin that exists but has no anomaly is an empty list, not a 404.
    assert _get(client, "?asset=bitcoin")["data"] == []


def test_a_symbol_of_too_many_coins_asks_for_an_id_or_slug(
        client: Any, coins: dict[str, int], engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO assets (slug, symbol, name) SELECT 'many-' || i, 'MANY', 'Many ' || i "
            "FROM generate_series(1, CAST(:n AS int)) AS i"), {"n": SYMBOL_ASSETS_MAX + 1})
    answer = client.get("/anomalies?asset=many")
    assert answer.status_code == 404
    assert "give an asset id or slug" in answer.get_json()["message"]
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM assets WHERE slug = 'many-1'"))
    assert _get(client, "?asset=many")["data"] == []  # 20 coins, none with an anomaly


@pytest.mark.parametrize("ref", ["", "%20%20", "%01x", "a%00b", "a" * 201,
                                 "99999999999999999999", "0"])
def test_a_bad_asset_reference_is_a_422_naming_the_field(
        client: Any, coins: dict[str, int], ref: str) -> None:
    answer = client.get(f"/anomalies?asset={ref}")
    assert answer.status_code == 422, ref
    body = answer.get_json()
    assert body["code"] == 422 and list(body["errors"]["query"]) == ["asset"], body


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's nodes that read the anomalies table, all levels."""
    found = [plan] if plan.get("Relation Name") == "anomalies" else []
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


def test_the_asset_filter_reads_a_page_of_the_asset_index_however_old_the_coins_rows(
        client: Any, coins: dict[str, int], engine: Engine) -> None:
    # 5,000 anomalies of each coin asked about (a bogus coin flagged run after run for weeks),
    # then 100,000 newer ones of 400 other coins: walking the primary key backwards and
    # filtering would read all of those before the first row of the page.
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO anomalies (kind, source, key, observed_at, evidence) "
            "SELECT 'jump', 'coingecko', 'quote:' || c || ':' || i, now(), '{}'::jsonb "
            "FROM unnest(CAST(:coins AS bigint[])) AS c, generate_series(1, 5000) AS i"),
            {"coins": [coins["ticoex-token"], coins["usd-quid-a"], coins["usd-quid-b"]]})
        conn.execute(text(
            "INSERT INTO anomalies (kind, source, key, observed_at, evidence) "
            "SELECT 'stale', 'coingecko', 'quote:' || (1000 + i % 400) || ':' || i, now(), "
            "'{}'::jsonb FROM generate_series(1, 100000) AS i"))
        conn.execute(text("ANALYZE anomalies"))
    api_engine = client.application.extensions["db_engine"]
    # (reference, coins it names, their anomalies: the fixture's and the year's)
    for ref, assets, total in ((str(coins["ticoex-token"]), 1, 2 + 5000), ("USDQ", 2, 3 + 10000)):
        statements: list[tuple[str, Any]] = []

        def keep(_conn: Connection, _cursor: Any, statement: str, parameters: Any,
                 *_: Any) -> None:
            statements.append((statement, parameters))

        event.listen(api_engine, "before_cursor_execute", keep)
        try:
            body = _get(client, f"?asset={ref}&page_size=50")
        finally:
            event.remove(api_engine, "before_cursor_execute", keep)
        assert body["pagination"]["total"] == total
        page = [s for s in statements if "FROM anomalies" in s[0] and "LIMIT" in s[0]]
        assert len(page) == 1, statements
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + page[0][0], page[0][1])
            row = cursor.fetchone()
            assert row is not None
            plan = row[0][0]["Plan"]
        finally:
            raw.close()
        scans = _scans(plan)
        # One backward range of the (asset_id, id) index per coin, each stopping at the
        # page's size plus one (the row that tells whether another page exists).
        assert len(scans) == assets, plan
        for scan in scans:
            assert scan["Node Type"] == "Index Scan", plan
            assert scan["Index Name"] == "ix_anomalies_asset", plan
            assert scan["Scan Direction"] == "Backward", plan
            assert scan["Actual Rows"] <= 51 and not scan.get("Rows Removed by Filter"), plan


def test_the_status_page_names_the_coins_with_anomalies(
        coins: dict[str, int], settings: Settings) -> None:
    from api import create_app

    client = create_app({"TESTING": True, "RATELIMIT_ENABLED": False},
                        settings=settings).test_client()
    page = client.get("/status").get_data(as_text=True)
    tico = f'<a href="/anomalies?asset={coins["ticoex-token"]}">TICOEX Token (TICO)</a> 2'
    assert tico in page
    assert f'href="/anomalies?asset={coins["usd-quid-b"]}">USD Quid (Base) (USDQ)</a> 2' in page
    assert "Bitcoin (BTC)</a> " not in page
    # Most anomalies first; the link answers with that coin's anomalies.
    assert page.index("TICOEX Token (TICO)") < page.index("USD Quid (Avalanche)")
    linked = client.get(f"/anomalies?asset={coins['ticoex-token']}").get_json()
    assert {a["asset"]["name"] for a in linked["data"]} == {"TICOEX Token"}


def test_the_2022_pages_bogus_coin_is_named_in_its_anomaly_through_the_real_ingest(
        clean_db: Engine, base_env: dict[str, str], csv_dir: Path) -> None:
    from api import create_app

    server = ReplayUpstream().start()
    try:
        server.state.coingecko_items = list(split_array(PAGE_2022.read_text()))
        settings = replay_settings(base_env, csv_dir, server)
        job = run_sources(clean_db, settings, ["coingecko"])
    finally:
        server.stop()
    assert job["status"] == "succeeded", job
    client = create_app({"TESTING": True, "RATELIMIT_ENABLED": False},
                        settings=settings).test_client()
    found = _get(client, "?asset=ticoex-token")["data"]
    assert found and {a["kind"] for a in found} >= {"implausible"}
    for anomaly in found:
        assert anomaly["key"].startswith(f"quote:{anomaly['asset']['id']}:")
        assert anomaly["asset"]["name"] == "TICOEX Token"
        assert anomaly["asset"]["slug"] == "ticoex-token"
        assert (anomaly["source"], anomaly["source_asset_id"]) == ("coingecko", "ticoex-token")
    symbol = found[0]["asset"]["symbol"]
    assert _get(client, f"?asset={symbol.lower()}")["data"] == found
    # Every data anomaly of the page names its coin.
    every = _get(client, "?page_size=500")["data"]
    assert every and all(a["asset"] and a["source_asset_id"] for a in every)
    page = client.get("/status").get_data(as_text=True)
    assert f'>TICOEX Token ({symbol})</a>' in page
