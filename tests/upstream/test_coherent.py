"""Coherent CoinPaprika tickers: the coins both upstreams have agree with the recorded page."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import requests

from shared.quality.consensus import window_consensus
from shared.quality.checks import QualityThresholds, check_batch
from tests.upstream import ReplayUpstream
from tests.upstream.__main__ import _parse_args
from tests.upstream.server import COINPAPRIKA_BTC_TICKER, recorded_coingecko_items

FETCHED = datetime(2025, 2, 9, 17, 44, 7, tzinfo=timezone.utc)


@pytest.fixture
def coherent() -> Iterator[ReplayUpstream]:
    """A replay upstream serving coherent CoinPaprika tickers."""
    server = ReplayUpstream(coinpaprika_coherent=True).start()
    yield server
    server.stop()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def tickers(server: ReplayUpstream) -> dict[str, dict[str, Any]]:
    body = requests.get(server.url + "/v1/tickers?quotes=USD", timeout=10).json()
    return {t["id"]: t for t in body}


def gecko() -> dict[str, dict[str, Any]]:
    return {g["id"]: g for g in (json.loads(t) for t in recorded_coingecko_items())}


def test_shared_coins_agree_in_price_market_cap_and_time(coherent: ReplayUpstream) -> None:
    served, page = tickers(coherent), gecko()
    recorded_keys = list(json.loads(COINPAPRIKA_BTC_TICKER.read_text()))
    assert len(served) == 2000 and all(list(t) == recorded_keys for t in served.values())
    pairs = {"btc-bitcoin": "bitcoin", "eth-ethereum": "ethereum", "usdt-tether": "tether",
             "sol-solana": "solana", "xrp-xrp": "ripple"}
    for paprika_id, gecko_id in pairs.items():
        usd, item = served[paprika_id]["quotes"]["USD"], page[gecko_id]
        assert abs(usd["price"] / item["current_price"] - 1) < 0.005, paprika_id
        assert abs(usd["market_cap"] / item["market_cap"] - 1) < 0.005, paprika_id
        lag = _time(item["last_updated"]) - _time(served[paprika_id]["last_updated"])
        assert timedelta(0) <= lag <= timedelta(minutes=5), paprika_id
    # Every ticker is dated at the page's moment (resolv-wstusr is 12 days old on both).
    times = sorted(_time(t["last_updated"]) for t in served.values())
    assert times[-1] <= FETCHED and times[1] >= FETCHED - timedelta(minutes=10)


def test_btc_agrees_across_sources_and_majors_are_clean(coherent: ReplayUpstream) -> None:
    served, page = tickers(coherent), gecko()
    quotes = []
    for source, paprika_id, item_price, at in (
        ("coingecko", None, page["bitcoin"]["current_price"], page["bitcoin"]["last_updated"]),
        ("coinpaprika", "btc-bitcoin", served["btc-bitcoin"]["quotes"]["USD"]["price"],
         served["btc-bitcoin"]["last_updated"]),
    ):
        quotes.append(SimpleNamespace(source=source, observed_at=_time(at),
                                      price_usd=Decimal(str(item_price)), quality=None))
    consensus = window_consensus(quotes, 3600, 0.02)
    assert consensus.sources == ["coingecko", "coinpaprika"] and consensus.disagree is False
    majors = [served[i] for i in ("btc-bitcoin", "eth-ethereum", "usdt-tether")]
    as_quotes = [SimpleNamespace(
        source_asset_id=t["id"], observed_at=_time(t["last_updated"]),
        price_usd=t["quotes"]["USD"]["price"], market_cap_usd=t["quotes"]["USD"]["market_cap"],
        volume_24h_usd=t["quotes"]["USD"]["volume_24h"],
        circulating_supply=t["circulating_supply"]) for t in majors]
    assert check_batch("coinpaprika", as_quotes, FETCHED, QualityThresholds()) == {}


def test_coherence_is_a_switch_and_the_default_stays_recorded() -> None:
    with ReplayUpstream() as server:
        assert requests.get(server.url + "/v1/tickers/btc-bitcoin", timeout=5).json() == \
            json.loads(COINPAPRIKA_BTC_TICKER.read_text())
        control = requests.post(server.url + "/_control/config",
                                json={"coinpaprika_coherent": True}, timeout=5)
        assert control.status_code == 200
        btc = requests.get(server.url + "/v1/tickers/btc-bitcoin", timeout=5).json()
        assert btc["last_updated"].startswith("2025-02-09T17:4")


def test_the_command_line_reads_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _parse_args([]).coinpaprika_coherent is False
    assert _parse_args(["--coinpaprika-coherent"]).coinpaprika_coherent is True
    monkeypatch.setenv("UPSTREAM_COINPAPRIKA_COHERENT", "1")
    assert _parse_args([]).coinpaprika_coherent is True
