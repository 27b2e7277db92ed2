"""GET /data, /data/<asset>, /data/<asset>/history on every source loaded by the real pipeline."""
from __future__ import annotations

import base64
import json
import statistics
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from tests.api.helpers import Loaded
from tests.helpers.raw_items import stored_items

SORTS = ("asset_id", "symbol", "name", "source", "price_usd", "market_cap_usd",
         "volume_24h_usd", "rank", "observed_at")


def _get(loaded: Loaded, url: str, status: int = 200) -> dict[str, Any]:
    response = loaded.client.get(url)
    assert response.status_code == status, (url, response.get_json())
    body: dict[str, Any] = response.get_json()
    return body


def _walk(loaded: Loaded, query: str, page_size: int = 250) -> list[dict[str, Any]]:
    """Every row of /data?<query>, following next_cursor."""
    rows: list[dict[str, Any]] = []
    body = _get(loaded, f"/data?{query}&page_size={page_size}&total=true")
    total = body["pagination"]["total"]
    while True:
        rows.extend(body["data"])
        cursor = body["pagination"]["next_cursor"]
        if cursor is None:
            break
        body = _get(loaded, f"/data?{query}&page_size={page_size}&cursor={cursor}")
        assert body["pagination"]["page"] is None
    assert len(rows) == total
    return rows


def _key(row: dict[str, Any], field: str) -> Any:
    value = row[field]
    if value is None:
        return None
    if field in ("price_usd", "market_cap_usd", "volume_24h_usd"):
        return Decimal(value)
    if field == "observed_at":
        return datetime.fromisoformat(value)
    return value


def _expected_order(rows: list[dict[str, Any]], field: str, descending: bool
                    ) -> list[tuple[int, str]]:
    """(asset_id, source) in `field` order, NULLs last, ties by (asset_id, source) ascending.

    By a money field, clean quotes come first, then flagged ones (docs/quality.md).
    """
    present = [r for r in rows if r[field] is not None]
    absent = [r for r in rows if r[field] is None]
    present.sort(key=lambda r: (r["asset_id"], r["source"]))
    present.sort(key=lambda r: _key(r, field), reverse=descending)  # stable: keeps tiebreak
    absent.sort(key=lambda r: (r["asset_id"], r["source"]))
    ordered = present + absent
    if field in ("price_usd", "market_cap_usd", "volume_24h_usd"):
        ordered.sort(key=lambda r: r["quality"]["status"] != "ok")  # stable as well
    return [(r["asset_id"], r["source"]) for r in ordered]


def test_records_keep_their_fields_and_exact_upstream_decimals(loaded: Loaded) -> None:
    body = _get(loaded, "/data?asset=bitcoin")
    by_source = {r["source"]: r for r in body["data"]}
    assert set(by_source) == {"coingecko", "coinpaprika", "csv"}
    for record in body["data"]:
        assert set(record) == {
            "asset_id", "symbol", "name", "source", "source_asset_id", "price_usd",
            "market_cap_usd", "volume_24h_usd", "rank", "observed_at", "quality"}
        assert record["observed_at"].endswith("+00:00")
    with loaded.engine.connect() as conn:
        payloads = [item.payload for item in stored_items(conn, "source = 'coingecko'")]
    (payload,) = [p for p in payloads if json.loads(p)["id"] == "bitcoin"]
    item = json.loads(payload, parse_float=Decimal, parse_int=Decimal)
    assert Decimal(by_source["coingecko"]["price_usd"]) == item["current_price"]
    assert Decimal(by_source["coingecko"]["market_cap_usd"]) == item["market_cap"]
    assert by_source["coingecko"]["source_asset_id"] == "bitcoin"
    assert by_source["coinpaprika"]["source_asset_id"] == "btc-bitcoin"


def test_filters_source_symbol_asset_q_and_time(loaded: Loaded) -> None:
    assert _get(loaded, "/data?source=coingecko&total=true")["pagination"]["total"] == 250
    assert _get(loaded, "/data?source=coinpaprika&total=true")["pagination"]["total"] == 2000

    eth = _get(loaded, "/data?symbol=eth&page_size=500")["data"]
    assert eth and all(r["symbol"] == "ETH" for r in eth)
    assert {"coingecko", "coinpaprika"} <= {r["source"] for r in eth if r["name"] == "Ethereum"}

    both = _get(loaded, "/data?asset=bitcoin,ethereum&page_size=500")["data"]
    assert {r["name"] for r in both} == {"Bitcoin", "Ethereum"} and len(both) == 5
    by_id = _get(loaded, f"/data?asset={both[0]['asset_id']}")["data"]
    assert {r["asset_id"] for r in by_id} == {both[0]["asset_id"]}

    searched = _walk(loaded, "q=bitcoin")
    assert searched and all("bitcoin" in (r["name"] + r["symbol"]).lower() for r in searched)
    assert any(r["symbol"] == "WBTC" for r in searched)
    # Wildcards are literal: '%' and '_' match only themselves.
    for wildcard in ("%25", "_"):
        rows = _walk(loaded, f"q={wildcard}")
        literal = "%" if wildcard == "%25" else "_"
        assert all(literal in r["name"] + r["symbol"] for r in rows)
        assert len(rows) < 100

    recent = _walk(loaded, "since=2025-01-01T00:00:00Z")
    assert recent and all(r["observed_at"] >= "2025-01-01" for r in recent)
    old = _walk(loaded, "until=2024-12-31T23:59:59")
    assert old and all(r["observed_at"] < "2025-01-01" for r in old)
    total = _get(loaded, "/data?total=true")["pagination"]["total"]
    assert len(recent) + len(old) == total
    window = _walk(loaded, "source=coingecko&since=2025-02-09T17:44:00%2B00:00"
                           "&until=2025-02-09T17:45:00%2B00:00")
    assert window and all(r["observed_at"].startswith("2025-02-09T17:44") for r in window)


@pytest.mark.parametrize("sort", [*SORTS, *(f"-{s}" for s in SORTS)])
def test_cursor_walks_every_sort_without_gaps_or_repeats(loaded: Loaded, sort: str) -> None:
    descending, field = sort.startswith("-"), sort.lstrip("-")
    rows = _walk(loaded, f"sort={sort}", page_size=500)
    keys = [(r["asset_id"], r["source"]) for r in rows]
    assert len(keys) == len(set(keys)) == _get(loaded, "/data?total=true")["pagination"][
        "total"]
    assert keys == _expected_order(rows, field, descending)


def test_page_numbers_and_cursor_agree(loaded: Loaded) -> None:
    first = _get(loaded, "/data?sort=-market_cap_usd&page_size=40&total=true")
    second_by_page = _get(loaded, "/data?sort=-market_cap_usd&page_size=40&page=2")
    cursor = first["pagination"]["next_cursor"]
    second_by_cursor = _get(loaded, f"/data?sort=-market_cap_usd&page_size=40&cursor={cursor}")
    assert second_by_page["data"] == second_by_cursor["data"]
    assert second_by_page["pagination"]["page"] == 2
    last = _get(loaded, f"/data?page_size=500&page={first['pagination']['total'] // 500 + 1}")
    assert last["pagination"]["next_cursor"] is None


def _b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_invalid_cursors_are_422_naming_cursor(loaded: Loaded) -> None:
    runs_cursor = _get(loaded, "/runs?page_size=1")["pagination"]["next_cursor"]
    rank_cursor = _get(loaded, "/data?sort=rank&page_size=1")["pagination"]["next_cursor"]
    bad = [
        "abc", "!!!!", _b64(b"\xff\xfe"), _b64(b"not json"), _b64([1, 2]), _b64("x"),
        runs_cursor,
        _b64({"t": "data", "s": "price_usd", "k": "abc", "a": 1, "r": "csv"}),
        _b64({"t": "data", "s": "price_usd", "k": "NaN", "a": 1, "r": "csv"}),
        _b64({"t": "data", "s": "asset_id", "k": "1", "a": 1, "r": "csv"}),
        _b64({"t": "data", "s": "asset_id", "k": 1, "a": 2**70, "r": "csv"}),
        _b64({"t": "data", "s": "asset_id", "k": None, "a": 1, "r": "csv"}),
        _b64({"t": "data", "s": "observed_at", "k": "yesterday", "a": 1, "r": "csv"}),
        _b64({"t": "data", "s": "observed_at", "k": "2021-01-01T00:00:00", "a": 1, "r": "csv"}),
        _b64({"t": "data", "s": "symbol", "k": "A\u0000", "a": 1, "r": "csv"}),
        _b64({"t": "data", "s": "symbol", "a": 1, "r": "csv"}),
        "A" * 2000,
    ]
    for cursor in bad:
        body = _get(loaded, f"/data?cursor={cursor}", 422)
        assert body["code"] == 422 and "cursor" in body["errors"]["query"], cursor
    # A cursor only fits the sort it was issued for.
    body = _get(loaded, f"/data?sort=-rank&cursor={rank_cursor}", 422)
    assert "sort" in body["errors"]["query"]["cursor"][0]


def test_asset_detail_with_source_ids_quotes_and_consensus(loaded: Loaded) -> None:
    body = _get(loaded, "/data/bitcoin")
    assert body["asset"] == {"id": body["asset"]["id"], "slug": "bitcoin", "symbol": "BTC",
                             "name": "Bitcoin"}
    assert {(s["source"], s["source_asset_id"]) for s in body["source_ids"]} >= {
        ("coingecko", "bitcoin"), ("coinpaprika", "btc-bitcoin")}
    prices = [Decimal(q["price_usd"]) for q in body["quotes"]]
    assert [q["source"] for q in body["quotes"]] == ["coingecko", "coinpaprika", "csv"]
    consensus = body["consensus"]
    # The recorded CoinPaprika page is from 2022, CoinGecko's from 2025, the CSV's last close
    # from 2026: years apart is not a disagreement. Only the freshest is in the window.
    assert consensus["sources"] == ["csv"] and consensus["single_source"] is True
    assert consensus["disagree"] is False
    assert consensus["price_usd"] == body["quotes"][2]["price_usd"]
    assert [(e["source"], e["reason"]) for e in consensus["excluded"]] == [
        ("coingecko", "out_of_window"), ("coinpaprika", "out_of_window")]
    assert consensus["threshold"] == loaded.settings.consensus_disagreement_share
    # A window of decades takes all three: then they disagree.
    from api import create_app

    wide = replace(loaded.settings, consensus_window_seconds=10**10)
    consensus = create_app({"TESTING": True}, settings=wide).test_client().get(
        "/data/bitcoin").get_json()["consensus"]
    median = statistics.median(prices)
    assert Decimal(consensus["price_usd"]) == median
    assert Decimal(consensus["min_price_usd"]) == min(prices)
    assert Decimal(consensus["max_price_usd"]) == max(prices)
    assert consensus["spread"] == pytest.approx(float((max(prices) - min(prices)) / median))
    assert consensus["disagree"] is True
    assert consensus["sources"] == ["coingecko", "coinpaprika", "csv"]

    # The same asset by id and by slug in any case.
    assert _get(loaded, f"/data/{body['asset']['id']}") == body
    assert _get(loaded, "/data/BitCoin") == body


def test_consensus_threshold_comes_from_settings(loaded: Loaded) -> None:
    from api import create_app

    tolerant = replace(loaded.settings, consensus_disagreement_share=1000.0,
                       consensus_window_seconds=10**10)
    client = create_app({"TESTING": True}, settings=tolerant).test_client()
    consensus = client.get("/data/bitcoin").get_json()["consensus"]
    assert consensus["disagree"] is False and consensus["threshold"] == 1000.0


@pytest.mark.parametrize("ref", ["no-such-coin", "999999999", "99999999999999999999999",
                                 "%00", "a" * 300])
def test_unknown_asset_is_404(loaded: Loaded, ref: str) -> None:
    for path in (f"/data/{ref}", f"/data/{ref}/history"):
        body = _get(loaded, path, 404)
        assert body["code"] == 404 and body["status"] == "Not Found" and body["message"]


def test_history_filters_and_cursor(loaded: Loaded) -> None:
    everything = _get(loaded, "/data/bitcoin/history?page_size=1&total=true")
    # 7,166 CSV rows + one CoinGecko and one CoinPaprika quote.
    assert everything["pagination"]["total"] == 7168
    # Counted only when asked for (total=true), as GET /data.
    uncounted = _get(loaded, "/data/bitcoin/history?page_size=1")["pagination"]
    assert uncounted["total"] is None and uncounted["total_pages"] is None
    assert uncounted["next_cursor"] == everything["pagination"]["next_cursor"]
    record = everything["data"][0]
    assert {"open_usd", "high_usd", "low_usd", "close_usd", "circulating_supply",
            "run_id", "source_asset_id"} <= set(record)
    coingecko = _get(loaded, "/data/bitcoin/history?source=coingecko&total=true")
    assert coingecko["pagination"]["total"] == 1
    assert coingecko["data"][0]["price_usd"] == _get(
        loaded, "/data?asset=bitcoin&source=coingecko")["data"][0]["price_usd"]

    query = "source=csv&since=2021-01-01T00:00:00Z&until=2021-12-31T23:59:59.999999Z"
    body = _get(loaded, f"/data/bitcoin/history?{query}&page_size=100&total=true")
    total, seen = body["pagination"]["total"], []
    while True:
        seen.extend((r["observed_at"], r["source"], r["source_asset_id"]) for r in body["data"])
        if body["pagination"]["next_cursor"] is None:
            break
        body = _get(loaded, f"/data/bitcoin/history?{query}&page_size=100"
                            f"&cursor={body['pagination']['next_cursor']}")
    assert len(seen) == len(set(seen)) == total > 365
    assert [s[0] for s in seen] == sorted((s[0] for s in seen), reverse=True)
    assert all(s[0].startswith("2021-") for s in seen)

    # A history cursor belongs to its asset.
    cursor = _get(loaded, "/data/bitcoin/history?page_size=1")["pagination"]["next_cursor"]
    body = _get(loaded, f"/data/ethereum/history?cursor={cursor}", 422)
    assert "cursor" in body["errors"]["query"]


@pytest.mark.parametrize(("query", "field"), [
    ("since=2020-01-01&until=2021-01-03", "until"),      # more than 366 days
    ("since=2021-01-02&until=2021-01-01", "until"),      # reversed
    ("since=yesterday", "since"),
    ("source=binance", "source"),
    ("page_size=501", "page_size"),
])
def test_history_bad_arguments_are_422(loaded: Loaded, query: str, field: str) -> None:
    body = _get(loaded, f"/data/bitcoin/history?{query}", 422)
    assert field in body["errors"]["query"]


@pytest.mark.parametrize(("query", "field"), [
    ("sort=price", "sort"), ("sort=--rank", "sort"), ("since=2021-13-01", "since"),
    ("until=0001-01-01T00:00:00%2B05:00", "until"),
    ("asset=" + ",".join(str(i) for i in range(101)), "asset"),
    ("q=" + "x" * 101, "q"), ("q=a%00b", "q"), ("symbol=" + "S" * 65, "symbol"),
    ("since=2021-01-02&until=2021-01-01", "until"),
])
def test_data_bad_arguments_are_422(loaded: Loaded, query: str, field: str) -> None:
    body = _get(loaded, f"/data?{query}", 422)
    assert body["code"] == 422 and field in body["errors"]["query"]
