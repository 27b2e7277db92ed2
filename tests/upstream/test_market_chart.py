"""The replay upstream's market_chart/range: CoinGecko's shape and granularity, recorded values."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any

import pytest

from tests.upstream import ReplayUpstream
from tests.upstream.market_chart import bitcoin_days

DAY = 86_400
# 2021-07-06 00:00 UTC: the day after the file's last row maps, cyclically, onto its first.
T = 1_625_529_600


def _get(server: ReplayUpstream, coin: str, start: int, end: int) -> Any:
    url = (f"{server.coingecko_base_url}/coins/{coin}/market_chart/range"
           f"?vs_currency=usd&from={start}&to={end}")
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read(), parse_float=Decimal)


@pytest.mark.parametrize("span, step", [(3600, 300), (DAY, 300), (DAY + 1, 3600),
                                        (90 * DAY, 3600), (90 * DAY + 1, DAY)])
def test_granularity_follows_the_range_length(span: int, step: int) -> None:
    with ReplayUpstream() as server:
        body = _get(server, "bitcoin", T, T + span)
    assert set(body) == {"prices", "market_caps", "total_volumes"}
    stamps = [ms for ms, _ in body["prices"]]
    assert stamps == [ms for ms, _ in body["total_volumes"]]
    assert all(b - a == step * 1000 for a, b in zip(stamps, stamps[1:]))
    assert T * 1000 <= stamps[0] and stamps[-1] <= (T + span) * 1000


def test_values_are_bitcoins_recorded_closes_and_other_coins_scale_them() -> None:
    with ReplayUpstream() as server:
        btc = _get(server, "bitcoin", T, T + 5 * DAY)
        eth = _get(server, "ethereum", T, T + 5 * DAY)
        day_points = [p for p in btc["prices"] if p[0] % (DAY * 1000) == 0]
        index = (T // DAY) % len(bitcoin_days())
        assert float(day_points[0][1]) == pytest.approx(bitcoin_days()[index][0], rel=1e-9)
        ratios = {round(float(e[1] / b[1]), 9) for b, e in zip(btc["prices"], eth["prices"])}
        assert len(ratios) == 1
        with pytest.raises(urllib.error.HTTPError) as missing:
            _get(server, "no-such-coin", T, T + DAY)
        assert missing.value.code == 404
        logged = server.requests("coingecko")
    assert [r["path"].rsplit("/", 3)[1] for r in logged] == ["bitcoin", "ethereum",
                                                             "no-such-coin"]
