"""Quality checks on the recorded pages and on doctored quotes: who is flagged, and why."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from shared.config import load_settings
from shared.quality.checks import (
    IMPLAUSIBLE, JUMP, OUTLIER, STALE, QualityThresholds, check_batch, check_columns, flag_kinds,
    outlier_flags, quality_of,
)

from tests.conftest import ROOT  # noqa: E402
PAGE_2025 = ROOT / "tests/fixtures/coingecko/coins_markets_usd_page1_per250_2025-02-09.json"
PAGE_2022 = ROOT / "tests/fixtures/coingecko/coins_markets_usd_page1_per250_pcp-all_2022-02-23.json"
KAGGLE_BTC = ROOT / "data/kaggle_srk_coin_Bitcoin.csv"
# The 2025 page's response Date header (its .response-meta.json).
FETCHED_2025 = datetime(2025, 2, 9, 17, 44, 7, tzinfo=timezone.utc)
T = QualityThresholds()


@dataclass(frozen=True)
class Q:
    """The fields the checks read, as records.ParsedQuote has them."""

    source_asset_id: str
    observed_at: datetime
    price_usd: Decimal | None = None
    market_cap_usd: Decimal | None = None
    volume_24h_usd: Decimal | None = None
    circulating_supply: Decimal | None = None
    source: str = "coingecko"


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def page(path: Path) -> list[Q]:
    """The recorded markets page as quotes."""
    items = json.loads(path.read_text(), parse_float=Decimal, parse_int=Decimal)
    return [Q(i["id"], datetime.fromisoformat(i["last_updated"].replace("Z", "+00:00")),
              _dec(i["current_price"]), _dec(i["market_cap"]), _dec(i["total_volume"]),
              _dec(i["circulating_supply"])) for i in items]


def flagged_ids(quotes: list[Q], result: dict[int, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {quotes[i].source_asset_id: sorted({f["flag"] for f in flags})
            for i, flags in result.items()}


def test_2022_bogus_supply_coin_is_implausible_and_majors_are_clean() -> None:
    quotes = page(PAGE_2022)
    fetched = max(q.observed_at for q in quotes)
    result = check_batch("coingecko", quotes, fetched, T)
    flagged = flagged_ids(quotes, result)
    # The $3.3T coin with $5.4 of volume is the only flagged quote on the page.
    assert flagged == {"ticoex-token": [IMPLAUSIBLE]}
    (flag,) = result[0]
    assert flag["evidence"]["market_cap_usd"] == 3333370870735.0
    assert flag["evidence"]["volume_24h_usd"] == 5.4
    assert flag["evidence"]["ratio"] > T.mcap_volume_ratio
    assert "24h volume" in flag["reason"] and flag["evidence"]["rule"]
    for coin in ("bitcoin", "ethereum", "tether"):
        assert coin not in flagged


def test_2025_page_flags_only_the_two_long_unupdated_coins_as_stale() -> None:
    quotes = page(PAGE_2025)
    result = check_batch("coingecko", quotes, FETCHED_2025, T)
    flagged = flagged_ids(quotes, result)
    # resolv-wstusr was last updated 12 days before the fetch, hashnote-usyc 2 h 4 min.
    assert flagged == {"resolv-wstusr": [STALE], "hashnote-usyc": [STALE]}
    stale = next(f for i, fl in result.items() for f in fl
                 if quotes[i].source_asset_id == "resolv-wstusr")
    assert stale["evidence"]["age_seconds"] > 12 * 86400
    assert stale["evidence"]["threshold_seconds"] == 3600


def test_stale_is_per_source_and_off_for_csv() -> None:
    old = Q("btc", FETCHED_2025 - timedelta(days=365), Decimal("30000"))
    assert check_batch("csv", [old], FETCHED_2025, T) == {}
    assert flag_kinds(quality_of(check_batch("coinpaprika", [old], FETCHED_2025, T)[0])) == [STALE]
    loose = replace(T, stale_seconds={"coinpaprika": 400 * 86400})
    assert check_batch("coinpaprika", [old], FETCHED_2025, loose) == {}


def test_negative_absurd_and_supply_mismatch_are_implausible() -> None:
    now = FETCHED_2025
    quotes = [
        Q("neg", now, Decimal("-1")),
        Q("huge", now, Decimal("1"), Decimal("2e13"), None, None),
        Q("slip", now, Decimal("1"), Decimal("1000000"), Decimal("1000"), Decimal("100000")),
        Q("ok", now, Decimal("1"), Decimal("1000000"), Decimal("1000"), Decimal("1000000")),
        Q("novol", now, Decimal("1"), Decimal("1000000"), Decimal("0"), None),
    ]
    result = check_batch("coingecko", quotes, now, T)
    assert sorted(result) == [0, 1, 2]
    assert result[0][0]["evidence"]["field"] == "price_usd"
    assert "larger than any" in result[1][0]["reason"]
    assert result[2][0]["evidence"]["ratio"] == 10.0
    assert quality_of([]) is None and quality_of(result[0])["status"] == "flagged"


def test_real_btc_closes_never_jump_but_a_100x_overnight_close_does() -> None:
    with KAGGLE_BTC.open() as handle:
        rows = list(csv.DictReader(handle))
    quotes = [Q("BTC", datetime.fromisoformat(r["Date"]).replace(tzinfo=timezone.utc),
                Decimal(r["Close"]), source="csv") for r in rows]
    assert check_batch("csv", quotes, None, T) == {}
    doctored = list(quotes)
    doctored[1500] = replace(quotes[1500], price_usd=quotes[1500].price_usd * 100)
    result = check_batch("csv", doctored, None, T)
    # The doctored day and the day back to normal are both moves of ~100x.
    assert sorted(result) == [1500, 1501]
    jump = result[1500][0]
    assert jump["flag"] == JUMP and 90 < jump["evidence"]["factor"] < 110
    assert jump["evidence"]["previous_price_usd"] == float(quotes[1499].price_usd)


def test_jump_against_the_previous_stored_quote() -> None:
    now = FETCHED_2025
    previous = {"bitcoin": (now - timedelta(minutes=5), Decimal("96000"))}
    ok = [Q("bitcoin", now, Decimal("97000"))]
    slip = [Q("bitcoin", now, Decimal("9600"))]
    assert check_batch("coingecko", ok, now, T, previous) == {}
    assert [f["flag"] for f in check_batch("coingecko", slip, now, T, previous)[0]] == [JUMP]


def test_a_quote_20_percent_off_the_others_is_an_outlier() -> None:
    now = FETCHED_2025
    quotes = [Q("b", now, Decimal("96114.08"), source="coingecko"),
              Q("b", now - timedelta(minutes=3), Decimal("96210.5"), source="coinpaprika"),
              Q("b", now - timedelta(minutes=30), Decimal("96114.08") * Decimal("1.2"),
                source="csv")]
    result = outlier_flags(quotes, T)
    assert list(result) == ["csv"]
    flag = result["csv"]
    assert flag["flag"] == OUTLIER and 19 < flag["evidence"]["deviation_pct"] < 21
    assert flag["evidence"]["sources"] == ["coingecko", "coinpaprika"]
    # Two sources alone cannot tell who is wrong; a year-old third is not a reference.
    assert outlier_flags(quotes[::2], T) == {}
    aged = [*quotes[:2], replace(quotes[2], observed_at=now - timedelta(days=365))]
    assert outlier_flags(aged, T) == {}
    # A flagged reference does not count.
    assert outlier_flags(quotes, T, {"coinpaprika": [{"flag": STALE}]}) == {}


def test_thresholds_come_from_settings() -> None:
    settings = load_settings({"QUALITY_JUMP_FACTOR": "3", "QUALITY_STALE_SECONDS_CSV": "60",
                              "CONSENSUS_WINDOW_SECONDS": "600"})
    t = QualityThresholds.from_settings(settings)
    assert (t.jump_factor, t.stale_seconds["csv"], t.outlier_window_seconds) == (3.0, 60, 600)
    assert t.stale_seconds["coingecko"] == 3600
    defaults = QualityThresholds.from_settings(load_settings({}))
    assert defaults == T


def test_columns_with_text_stamps_as_the_csv_path_has_them() -> None:
    # The CSV fast path holds ISO text stamps and number text: floats and text compare fine.
    stamps = ["2024-01-01T00:00:00+00:00", "2024-01-02T00:00:00+00:00",
              "2024-01-03T00:00:00+00:00"]
    result = check_columns("csv", ["BTC"] * 3, stamps, [float("42000.5"), 4200050.0, 43000.0],
                           T, previous={"BTC": ("2023-12-31T00:00:00+00:00", 41000.0)})
    assert sorted(result) == [1, 2]
    assert result[1][0]["evidence"]["previous_observed_at"] == stamps[0]
    # Newest first (CoinMarketCap's export order) is sorted before comparing.
    assert sorted(check_columns("csv", ["BTC"] * 3, stamps[::-1],
                                [43000.0, 4200050.0, 42000.5], T)) == [0, 1]


def test_a_clean_25000_row_batch_gives_no_flags() -> None:
    # The CSV batch size (CSV_BATCH_ROWS) of clean, coherent rows; what it costs is measured by
    # `make bench` (docs/benchmarks.md), not asserted here.
    n = 25_000
    stamps = [f"2020-01-01T00:00:00.{i:06d}" for i in range(n)]
    prices = [30000.0 + i for i in range(n)]
    result = check_columns("csv", ["BTC"] * n, stamps, prices, T, mcaps=[6e11] * n,
                           volumes=[2e10] * n, supplies=[2e7] * n)
    assert result == {}


def test_column_fast_paths_agree_with_the_row_by_row_checks() -> None:
    # One coin's block in time order: only its first row is compared with the stored quote.
    n = 1000
    stamps = [f"2024-01-01T00:00:00.{i:06d}" for i in range(n)]
    prices = [100.0 + i % 7 for i in range(n)]
    assert check_columns("csv", ["X"] * n, stamps, prices, T,
                         previous={"X": ("2023", 101.0)}) == {}
    first = check_columns("csv", ["X"] * n, stamps, prices, T, previous={"X": ("2023", 1.5)})
    assert list(first) == [0] and first[0][0]["flag"] == JUMP
    # One implausible row among clean ones is found, and only it.
    mcaps, volumes = [1e9] * n, [1e7] * n
    volumes[617] = 1.0
    found = check_columns("csv", ["X"] * n, stamps, prices, T, mcaps=mcaps, volumes=volumes)
    assert list(found) == [617] and found[617][0]["flag"] == IMPLAUSIBLE
    # Unknown values (None, zero volume) take the row-by-row path and are not judged.
    volumes[617], mcaps[3] = 0.0, None
    assert check_columns("csv", ["X"] * n, stamps, prices, T, mcaps=mcaps,
                         volumes=volumes) == {}
