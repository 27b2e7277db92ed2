"""GET /data?symbol= takes a comma list; the history range cap holds with an open end."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from sqlalchemy import text

from tests.api.helpers import Loaded


def _get(loaded: Loaded, url: str, status: int = 200) -> dict[str, Any]:
    response = loaded.client.get(url)
    assert response.status_code == status, (url, response.get_data(as_text=True)[:500])
    body: dict[str, Any] = response.get_json()
    return body


def _iso(moment: datetime) -> str:
    return quote(moment.isoformat())


def _first_quote(loaded: Loaded, source: str | None = None) -> datetime:
    with loaded.engine.connect() as conn:
        first: datetime = conn.execute(text(
            "SELECT min(q.observed_at) FROM quotes q JOIN assets a ON a.id = q.asset_id "
            "WHERE a.slug = 'bitcoin' AND (CAST(:s AS text) IS NULL OR q.source = :s)"),
            {"s": source}).scalar_one()
    return first


def test_symbol_takes_a_comma_list_like_asset(loaded: Loaded) -> None:
    both = _get(loaded, "/data?symbol=BTC,ETH&page_size=500&total=true")
    symbols = {row["symbol"] for row in both["data"]}
    assert symbols == {"BTC", "ETH"}
    btc = _get(loaded, "/data?symbol=btc&page_size=500&total=true")["pagination"]["total"]
    eth = _get(loaded, "/data?symbol=eth&page_size=500&total=true")["pagination"]["total"]
    assert btc > 0 and eth > 0
    assert both["pagination"]["total"] == btc + eth == len(both["data"])
    # Case, spaces and repeats do not matter; the answer is the same records.
    same = _get(loaded, "/data?symbol=%20eth,Btc,BTC&page_size=500")
    assert same["data"] == both["data"]
    # With the other filters, combined with AND.
    csv_only = _get(loaded, "/data?symbol=BTC,ETH&source=csv")["data"]
    assert {(r["symbol"], r["source"]) for r in csv_only} == {("BTC", "csv")}
    # A symbol nobody has only adds nothing.
    assert _get(loaded, "/data?symbol=BTC,NOPE123&total=true")["pagination"]["total"] == btc


def test_bad_symbol_lists_are_422_naming_symbol(loaded: Loaded) -> None:
    for query in ("symbol=", "symbol=" + ",".join(f"S{i}" for i in range(101)),
                  "symbol=BTC," + "x" * 65, "symbol=B%00TC"):
        assert "symbol" in _get(loaded, f"/data?{query}", 422)["errors"]["query"], query


def test_history_cap_with_both_ends_and_without_any(loaded: Loaded) -> None:
    first = _first_quote(loaded)
    assert datetime.now(timezone.utc) - first > timedelta(days=366 * 3)
    ok = _get(loaded, f"/data/bitcoin/history?since={_iso(first)}"
                      f"&until={_iso(first + timedelta(days=366))}")
    assert ok["data"]
    too_long = (f"/data/bitcoin/history?since={_iso(first)}"
                f"&until={_iso(first + timedelta(days=367))}")
    assert "until" in _get(loaded, too_long, 422)["errors"]["query"]
    # No range at all: the whole history, newest first, one page at a time.
    assert _get(loaded, "/data/bitcoin/history?page_size=5&total=true")["pagination"][
        "total"] > 366


def test_history_cap_with_an_open_until_counts_now(loaded: Loaded) -> None:
    now = datetime.now(timezone.utc)
    long_ago = _get(loaded, f"/data/bitcoin/history?since={_iso(now - timedelta(days=400))}",
                    422)
    messages = long_ago["errors"]["query"]["since"]
    assert "366 days" in messages[0] and "open until counts as now" in messages[0]
    recent = _get(loaded, f"/data/bitcoin/history?since={_iso(now - timedelta(days=300))}")
    assert all(row["observed_at"] >= (now - timedelta(days=300)).isoformat()
               for row in recent["data"])


def test_history_cap_with_an_open_since_counts_the_first_quote(loaded: Loaded) -> None:
    first = _first_quote(loaded)
    within = _get(loaded, f"/data/bitcoin/history?until={_iso(first + timedelta(days=300))}"
                          "&page_size=500")
    assert within["data"] and all(
        row["observed_at"] <= (first + timedelta(days=300)).isoformat()
        for row in within["data"])
    beyond = _get(loaded, f"/data/bitcoin/history?until={_iso(first + timedelta(days=400))}",
                  422)
    assert "first quote" in beyond["errors"]["query"]["until"][0]
    # The first quote is the filtered source's: CoinGecko's BTC history is one recent quote.
    cg_first = _first_quote(loaded, "coingecko")
    assert cg_first - first > timedelta(days=366)
    until = _iso(cg_first + timedelta(days=1))
    assert _get(loaded, f"/data/bitcoin/history?source=coingecko&until={until}")["data"]
    assert "until" in _get(loaded, f"/data/bitcoin/history?until={until}", 422)["errors"]["query"]
    # An unknown asset is still a 404, not a range error.
    assert _get(loaded, f"/data/no-such-coin/history?until={until}", 404)["code"] == 404
    # The span is the asset's own: ETH's first quote is CoinGecko/CoinPaprika's, so an until
    # that would be years after BTC's first quote is within ETH's cap.
    with loaded.engine.connect() as conn:
        eth_first = conn.execute(text(
            "SELECT min(q.observed_at) FROM quotes q JOIN assets a ON a.id = q.asset_id "
            "WHERE a.slug = 'ethereum'")).scalar_one()
    assert _get(loaded, "/data/ethereum/history?until=" + _iso(eth_first + timedelta(days=30)))[
        "data"]
