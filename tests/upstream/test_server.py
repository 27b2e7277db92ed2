"""The replay upstream serves the recorded data faithfully and injects each fault on demand."""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from tests.upstream import ReplayUpstream, UpstreamControl, max_requests_in_window
from tests.upstream.server import (
    COINGECKO_PAGE,
    COINPAPRIKA_BTC_TICKER,
    COINPAPRIKA_COINS,
    encode_json,
    decode_json,
    recorded_coingecko_items,
)

ROOT = Path(__file__).resolve().parents[2]
MARKETS = "/api/v3/coins/markets?vs_currency=usd&order=market_cap_desc&per_page=250&page={page}"


@pytest.fixture
def upstream() -> Iterator[ReplayUpstream]:
    """A fresh in-process replay upstream."""
    server = ReplayUpstream().start()
    yield server
    server.stop()


def get(server: ReplayUpstream, path: str, **kwargs: Any) -> requests.Response:
    """GET without following redirects (the control of what the server said is the point)."""
    return requests.get(server.url + path, timeout=5, allow_redirects=False, **kwargs)


def test_recorded_page_is_served_byte_for_byte(upstream: ReplayUpstream) -> None:
    """Page 1 is exactly the recorded body; page 2 is the empty page that ends paging."""
    first = get(upstream, MARKETS.format(page=1))
    assert first.status_code == 200
    assert first.content == COINGECKO_PAGE.read_bytes()
    assert first.headers["Content-Type"] == "application/json; charset=utf-8"
    assert get(upstream, MARKETS.format(page=2)).content == b"[]"


def test_reserializing_recorded_items_is_the_identity() -> None:
    """Derived and drifted items are re-serialized: that must not alter any number's text."""
    for text in recorded_coingecko_items():
        assert encode_json(decode_json(text)) == text


def test_more_pages_are_derived_with_distinct_ids() -> None:
    """coingecko_total=600 gives 250 + 250 + 100 coins with unique ids, then an empty page."""
    with ReplayUpstream(coingecko_total=600) as server:
        pages = [get(server, MARKETS.format(page=p)).json() for p in (1, 2, 3, 4)]
    assert [len(p) for p in pages] == [250, 250, 100, 0]
    ids = [c["id"] for p in pages for c in p]
    assert len(set(ids)) == 600
    assert pages[1][0]["id"] == "bitcoin-p2"
    assert pages[1][0]["market_cap_rank"] == 251
    assert pages[1][0]["symbol"] == "btc"


def test_per_page_over_250_and_missing_currency_are_rejected(upstream: ReplayUpstream) -> None:
    """Like CoinGecko: per_page is capped at 250, vs_currency is mandatory."""
    assert get(upstream, "/api/v3/coins/markets?vs_currency=usd&per_page=251").status_code == 400
    assert get(upstream, "/api/v3/coins/markets?per_page=10").status_code == 400
    ping = get(upstream, "/api/v3/ping")
    assert ping.json() == {"gecko_says": "(V3) To the Moon!"}


def test_coinpaprika_tickers_are_real_coins_in_the_recorded_shape(upstream: ReplayUpstream) -> None:
    """2,000 tickers of real coins by rank; btc-bitcoin is the recorded ticker; same bytes twice."""
    first = get(upstream, "/v1/tickers?quotes=USD")
    second = get(upstream, "/v1/tickers?quotes=USD")
    assert first.content == second.content
    tickers = first.json()
    assert len(tickers) == 2000
    recorded = json.loads(COINPAPRIKA_BTC_TICKER.read_text())
    assert COINPAPRIKA_BTC_TICKER.read_text().strip() in first.text
    assert tickers[0] == recorded
    coins = {c["id"]: c for c in json.loads(COINPAPRIKA_COINS.read_text())}
    for ticker in tickers:
        coin = coins[ticker["id"]]
        assert (ticker["name"], ticker["symbol"], ticker["rank"]) == (
            coin["name"], coin["symbol"], coin["rank"]
        )
        assert coin["is_active"]
        assert list(ticker) == list(recorded)
        assert list(ticker["quotes"]["USD"]) == list(recorded["quotes"]["USD"])
    assert [t["rank"] for t in tickers] == sorted(t["rank"] for t in tickers)
    # The documented quirks are present: uncapped coins as 0, some "" values.
    assert sum(1 for t in tickers if t["max_supply"] == 0) > 100
    assert any(t["total_supply"] == "" for t in tickers)
    assert get(upstream, "/v1/tickers/btc-bitcoin").json() == recorded
    assert get(upstream, "/v1/tickers?quotes=EUR").status_code == 400


def test_coinpaprika_coins_list_is_served(upstream: ReplayUpstream) -> None:
    """/v1/coins is the recorded list."""
    assert get(upstream, "/v1/coins").content == COINPAPRIKA_COINS.read_bytes()


def test_fault_count_and_page_targeting(upstream: ReplayUpstream) -> None:
    """A fault hits `count` matching requests only, and only the page it names."""
    upstream.add_fault("503", endpoint="coingecko", count=2, page=2)
    assert get(upstream, MARKETS.format(page=1)).status_code == 200
    assert get(upstream, "/v1/tickers").status_code == 200
    assert get(upstream, MARKETS.format(page=2)).status_code == 503
    assert get(upstream, MARKETS.format(page=2)).status_code == 503
    assert get(upstream, MARKETS.format(page=2)).status_code == 200
    log = upstream.requests()
    assert [(e["endpoint"], e["page"], e["status"], e["fault"]) for e in log] == [
        ("coingecko", 1, 200, None),
        ("coinpaprika", None, 200, None),
        ("coingecko", 2, 503, "503"),
        ("coingecko", 2, 503, "503"),
        ("coingecko", 2, 200, None),
    ]
    assert all(e["mono"] > 0 and e["wall"] > 1e9 for e in log)
    assert [e["mono"] for e in log] == sorted(e["mono"] for e in log)


def test_429_variants_carry_retry_after(upstream: ReplayUpstream) -> None:
    """JSON and Cloudflare-HTML 429s, Retry-After in seconds or as an HTTP date."""
    upstream.add_fault("429", endpoint="coingecko", count=1, retry_after=7)
    upstream.add_fault("429", endpoint="coingecko", count=1, body="html", retry_after=3)
    upstream.add_fault("429", endpoint="coinpaprika", count=1, retry_after=2,
                       retry_after_format="date")
    json_429 = get(upstream, "/api/v3/ping")
    assert (json_429.status_code, json_429.headers["Retry-After"]) == (429, "7")
    assert json_429.json()["status"]["error_code"] == 429
    html_429 = get(upstream, "/api/v3/ping")
    assert html_429.headers["Retry-After"] == "3"
    assert "rate limited" in html_429.text
    assert html_429.headers["Content-Type"].startswith("text/html")
    paprika = get(upstream, "/v1/tickers")
    assert paprika.status_code == 429 and paprika.json() == {"error": "Too Many Requests"}
    assert paprika.headers["Retry-After"].endswith("GMT")


def test_error_statuses(upstream: ReplayUpstream) -> None:
    """402 (CoinPaprika style), 401, 400 and 502 (HTML) are served as asked."""
    upstream.add_fault("402", endpoint="coinpaprika", count=1)
    upstream.add_fault("401", endpoint="coingecko", count=1)
    upstream.add_fault("400", endpoint="coingecko", count=1)
    upstream.add_fault("502", endpoint="coingecko", count=1)
    paprika = get(upstream, "/v1/tickers")
    assert paprika.status_code == 402 and "error" in paprika.json()
    assert get(upstream, "/api/v3/ping").status_code == 401
    assert get(upstream, "/api/v3/ping").status_code == 400
    bad_gateway = get(upstream, "/api/v3/ping")
    assert bad_gateway.status_code == 502 and "<html>" in bad_gateway.text


def test_redirect_points_to_another_host(upstream: ReplayUpstream) -> None:
    """The 302 sends clients to 127.0.0.2 unless a location is given."""
    upstream.add_fault("redirect", endpoint="coingecko", count=1)
    response = get(upstream, "/api/v3/ping")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("http://127.0.0.2:")


def _raw_get(server: ReplayUpstream, path: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", path)
    return connection.getresponse()


def test_truncated_body_is_shorter_than_its_content_length(upstream: ReplayUpstream) -> None:
    """Content-Length promises the whole page; half of it arrives."""
    upstream.add_fault("truncated", endpoint="coingecko", count=1, fraction=0.5)
    response = _raw_get(upstream, MARKETS.format(page=1))
    promised = int(response.headers["Content-Length"])
    assert promised == len(COINGECKO_PAGE.read_bytes())
    with pytest.raises(http.client.IncompleteRead) as excinfo:
        response.read()
    assert len(excinfo.value.partial) == promised // 2


def test_reset_aborts_the_connection(upstream: ReplayUpstream) -> None:
    """The reset mode tears the TCP connection down without an HTTP answer."""
    upstream.add_fault("reset", endpoint="coingecko", count=1)
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        _raw_get(upstream, "/api/v3/ping")
    assert get(upstream, "/api/v3/ping").status_code == 200


def test_slow_mode_delays_the_answer(upstream: ReplayUpstream) -> None:
    """A slow fault answers only after the configured delay."""
    upstream.add_fault("slow", endpoint="coingecko", count=1, seconds=0.4)
    started = time.monotonic()
    assert get(upstream, "/api/v3/ping").status_code == 200
    assert time.monotonic() - started >= 0.4


def _get_in_thread(server: ReplayUpstream, path: str) -> tuple[threading.Thread, list[Any]]:
    """GET `path` in a background thread; the list receives the response (or the error)."""
    out: list[Any] = []

    def fetch() -> None:
        try:
            out.append(get(server, path))
        except requests.RequestException as exc:
            out.append(exc)

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    return thread, out


def test_hold_keeps_matching_requests_in_flight_until_released(upstream: ReplayUpstream) -> None:
    """A hold answers nothing until released (however long that is), then answers as usual;
    only requests with its path and query are held, and after release none is."""
    chart = "/api/v3/coins/bitcoin/market_chart/range"
    hold = upstream.hold(endpoint="coingecko", path=chart, query={"from": 100})
    thread, out = _get_in_thread(upstream, chart + "?vs_currency=usd&from=100&to=200000")
    (entry,) = upstream.wait_held(hold, timeout=5)
    assert entry["path"] == chart and entry["hold"] == "waiting" and entry["status"] is None
    # Other windows of the same coin, and other paths, are not held.
    other = get(upstream, chart + "?vs_currency=usd&from=200001&to=400000")
    assert other.status_code == 200
    assert get(upstream, "/api/v3/ping").status_code == 200
    thread.join(1.0)
    assert thread.is_alive() and out == []  # still waiting: nothing but release() ends it
    assert upstream.release(hold) == 1
    thread.join(5)
    (answer,) = out
    assert answer.status_code == 200
    assert set(answer.json()) == {"prices", "market_caps", "total_volumes"}
    assert [e["hold"] for e in upstream.held(hold)] == ["released"]
    # Released: the same request goes straight through.
    assert get(upstream, chart + "?vs_currency=usd&from=100&to=200000").status_code == 200
    assert len(upstream.held(hold)) == 1


def test_a_hold_with_a_count_holds_that_many_and_stop_releases_them() -> None:
    """count=2 holds the first two matching requests; stop() lets held requests go."""
    server = ReplayUpstream().start()
    try:
        hold = server.hold(endpoint="coinpaprika", count=2)
        first = _get_in_thread(server, "/v1/tickers/btc-bitcoin")
        second = _get_in_thread(server, "/v1/tickers/btc-bitcoin")
        assert len(server.wait_held(hold, count=2, timeout=5)) == 2
        assert get(server, "/v1/tickers/btc-bitcoin").status_code == 200  # the third passes
    finally:
        server.stop()
    for thread, _ in (first, second):
        thread.join(5)
        assert not thread.is_alive()


def test_hold_over_the_control_api(upstream: ReplayUpstream) -> None:
    """hold, held and release work over HTTP for a server in another process."""
    control = UpstreamControl(upstream.url)
    hold = control.hold(endpoint="coingecko", path="/api/v3/ping")
    thread, out = _get_in_thread(upstream, "/api/v3/ping")
    (entry,) = control.wait_held(hold, timeout=5)
    assert entry["hold"] == "waiting"
    assert control.release(hold) == 1
    thread.join(5)
    assert out[0].status_code == 200
    assert [e["hold"] for e in control.held(hold)] == ["released"]
    with pytest.raises(TimeoutError):
        control.wait_held(hold, timeout=0.2)  # released: nothing is held any more


def test_malformed_and_drift_bodies(upstream: ReplayUpstream) -> None:
    """Malformed is not JSON; drift renames, retypes and removes fields as configured."""
    upstream.add_fault("malformed", endpoint="coingecko", count=1)
    upstream.add_fault("drift", endpoint="coingecko", count=1)
    with pytest.raises(ValueError):
        json.loads(get(upstream, MARKETS.format(page=1)).text)
    drifted = get(upstream, MARKETS.format(page=1)).json()
    first = drifted[0]
    assert "current_price" not in first and first["price"] == 96114.08481738689
    assert first["market_cap"] == "1903746811536"
    assert "last_updated" not in first
    upstream.add_fault("drift", endpoint="coinpaprika", count=1,
                       rename={"quotes.USD.price": "quotes.USD.price_usd"})
    ticker = get(upstream, "/v1/tickers").json()[0]
    assert ticker["quotes"]["USD"]["price_usd"] == 38054.559249568
    assert list(ticker["quotes"]["USD"])[0] == "price_usd"


def test_advance_bumps_last_updated_of_chosen_coins(upstream: ReplayUpstream) -> None:
    """advance moves last_updated forward (same format) for the named coins only."""
    before = get(upstream, MARKETS.format(page=1)).json()
    assert upstream.advance(90, endpoint="coingecko", ids=["bitcoin", "ethereum"]) == 2
    after = get(upstream, MARKETS.format(page=1)).json()
    assert after[0]["last_updated"] == "2025-02-09T17:45:34.143Z"
    changed = [b["id"] for b, a in zip(before, after) if a != b]
    assert changed == ["bitcoin", "ethereum"]
    assert upstream.advance(60, endpoint="coinpaprika", first=3, price_factor="1.01") == 3
    btc = get(upstream, "/v1/tickers").json()[0]
    assert btc["last_updated"] == "2022-01-30T18:24:08Z"
    upstream.reset()
    assert get(upstream, MARKETS.format(page=1)).content == COINGECKO_PAGE.read_bytes()
    assert len(upstream.requests()) == 1


def test_required_keys_are_checked_and_never_logged() -> None:
    """With a required key the server answers 401 without it; the log keeps header names only."""
    with ReplayUpstream(require_keys={"coingecko": "demo-key-1"}) as server:
        assert get(server, "/api/v3/ping").status_code == 401
        ok = get(server, "/api/v3/ping", headers={"x-cg-demo-api-key": "demo-key-1"})
        assert ok.status_code == 200
        log = server.requests()
    assert log[1]["auth_headers"] == ["x-cg-demo-api-key"]
    assert "demo-key-1" not in json.dumps(log)


def test_control_api_over_http(upstream: ReplayUpstream) -> None:
    """The control endpoints do over HTTP what the in-process methods do."""
    control = UpstreamControl(upstream.url)
    fault_id = control.add_fault("503", endpoint="coinpaprika", count=1)
    assert fault_id > 0
    assert get(upstream, "/v1/tickers").status_code == 503
    assert control.advance(30, endpoint="coingecko", first=1) == 1
    entries = control.requests(endpoint="coinpaprika")
    assert [e["status"] for e in entries] == [503]
    control.add_fault("401", endpoint="*")
    control.clear_faults()
    assert get(upstream, "/api/v3/ping").status_code == 200
    control.reset()
    assert control.requests() == []
    bad = requests.post(upstream.url + "/_control/fault", json={"mode": "nope"}, timeout=5)
    assert bad.status_code == 400 and "unknown fault mode" in bad.json()["error"]


def test_max_requests_in_window() -> None:
    """The window counter used by the rate-limit tests counts half-open windows."""
    assert max_requests_in_window([0, 1, 2, 3], 2) == 2
    assert max_requests_in_window([0, 0.5, 1.9, 2.0], 2) == 3
    assert max_requests_in_window([], 1) == 0


@pytest.mark.processes
def test_runs_as_a_subprocess_with_faults_from_the_start() -> None:
    """`python -m tests.upstream --port 0` prints READY <url>; --fault and env faults apply."""
    env = dict(os.environ, UPSTREAM_FAULTS=json.dumps([{"endpoint": "coinpaprika", "mode": "402"}]))
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.upstream", "--port", "0", "--coingecko-total", "300",
         "--fault", json.dumps({"endpoint": "coingecko", "mode": "503", "count": 1})],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().split()
        assert ready[0] == "READY" and ready[1].startswith("http://127.0.0.1:")
        url = ready[1]
        assert requests.get(url + "/api/v3/ping", timeout=5).status_code == 503
        assert requests.get(url + "/api/v3/ping", timeout=5).status_code == 200
        assert requests.get(url + "/v1/tickers", timeout=5).status_code == 402
        page2 = requests.get(url + MARKETS.format(page=2), timeout=5).json()
        assert len(page2) == 50
        assert len(UpstreamControl(url).requests()) == 4
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
