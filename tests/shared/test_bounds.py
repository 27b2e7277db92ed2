"""Input bounds come from the schema and hold on the API item path: a value the database cannot
hold rejects its item with a reason (unit), and a CoinGecko run with such items still succeeds
and loads the rest (replay upstream, real PostgreSQL)."""
from __future__ import annotations

from tests.conftest import ROOT
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from shared import bounds
from shared.bounds import numeric_problem
from shared.models import Asset, AssetSourceId, Quote
from shared.sources.parsing import ValueParseError, parse_decimal, parse_int, parse_timestamp
from shared.sources import csv_formats
from shared.sources.csv_formats import detect_format
from shared.sources.coinpaprika import parse_ticker
from shared.sources.drift import DriftReport
from shared.sources.exact_json import JsonItem, parse_json_array
from tests.api.helpers import replay_settings, run_sources
from tests.shared.sources.conftest import gecko_batches
from tests.upstream import ReplayUpstream

FIXTURES = ROOT / "tests" / "fixtures"
GECKO_PAGE = FIXTURES / "coingecko" / "coins_markets_usd_page1_per250_2025-02-09.json"


def _type(table: Any, column: str, attribute: str) -> Any:
    return getattr(table.__table__.c[column].type, attribute)


def test_text_bounds_are_the_models_varchar_lengths() -> None:
    assert bounds.SYMBOL_MAX == _type(Asset, "symbol", "length") == 64
    assert bounds.NAME_MAX == _type(Asset, "name", "length") == 300
    assert bounds.SOURCE_ASSET_ID_MAX == _type(AssetSourceId, "source_asset_id", "length")
    assert bounds.SOURCE_ASSET_ID_MAX == _type(Quote, "source_asset_id", "length") == 300
    # The quote numbers are unconstrained NUMERIC: held to the declared default.
    assert _type(Quote, "price_usd", "precision") is None
    assert (bounds.NUMERIC_INTEGER_DIGITS, bounds.NUMERIC_SCALE) == (30, 40)
    assert bounds.RANK_MAX == 2**31 - 1
    assert bounds.CSV_MAX_COLUMNS * bounds.CELL_MAX_CHARS * 4 <= bounds.LINE_MAX_BYTES
    widest = max(detect_format(header, Path("x-usd-max.csv")).columns  # type: ignore[union-attr]
                 for header in csv_formats._HEADERS)
    assert widest == bounds.CSV_MAX_COLUMNS


@pytest.mark.parametrize("value, problem", [
    ("1e200000", "out of range"), ("1e300", "out of range"), ("1e5000", "out of range"),
    ("1" * 31, "out of range"), ("1e30", "out of range"), ("1e-41", "too precise"),
    ("0." + "0" * 40 + "1", "too precise"), ("-1e31", "out of range"),
    ("1" * 30, None), ("9.99e29", None), ("1e-40", None), ("0", None), ("0e-40", None),
    ("0.000000000000000000012345", None), ("96114.08481738689", None),
])
def test_numeric_problem(value: str, problem: str | None) -> None:
    found = numeric_problem(Decimal(value))
    assert (found is None) if problem is None else (problem in str(found))


def test_parse_decimal_and_int_refuse_what_the_columns_cannot_hold() -> None:
    for value in ("1e200000", "1e300", "1e5000", Decimal("1e400"), "1e-41"):
        with pytest.raises(ValueParseError) as caught:
            parse_decimal(value)
        assert len(str(caught.value)) < 120  # short, whatever was sent
    assert parse_decimal("9" * 30) == Decimal("9" * 30)
    with pytest.raises(ValueParseError, match="out of range"):
        parse_int("2147483648")
    assert parse_int("2147483647") == 2**31 - 1
    with pytest.raises(ValueParseError, match="not a number: '1111111111"):
        parse_decimal("1" * 5000 + "x")  # the reason quotes 40 characters, not 5,000
    with pytest.raises(ValueParseError, match="timestamp out of range"):
        parse_timestamp("9999-12-31T23:00:00-05:00")  # past the last UTC datetime


def _hostile_item(base: dict[str, Any], **changes: Any) -> str:
    """The recorded item with `changes`; a value given as ("raw", text) goes in as JSON text."""
    item = dict(base)
    raw: dict[str, str] = {}
    for key, value in changes.items():
        if isinstance(value, tuple):
            item[key] = f"@{key}@"
            raw[f'"@{key}@"'] = value[1]
        else:
            item[key] = value
    text_ = json.dumps(item)
    for placeholder, number in raw.items():
        text_ = text_.replace(placeholder, number)
    return text_


# (changes to the recorded Bitcoin item, expected reason)
GECKO_CASES: list[tuple[dict[str, Any], str]] = [
    ({"current_price": ("raw", "1e200000")}, "current_price: Decimal('1E+200000') is out of range"),
    ({"current_price": ("raw", "1e300")}, "current_price: Decimal('1E+300') is out of range"),
    ({"market_cap": ("raw", "1e5000")}, "market_cap: Decimal('1E+5000') is out of range"),
    ({"total_supply": ("raw", "1e-50")}, "total_supply: Decimal('1E-50') is too precise"),
    ({"market_cap_rank": ("raw", "99999999999")},
     "market_cap_rank: Decimal('99999999999') is out of range"),
    ({"name": "N" * 400}, "name longer than 300 characters"),
    ({"symbol": "S" * 65}, "symbol longer than 64 characters"),
    ({"id": "i" * 301}, "id longer than 300 characters"),
    ({"id": "bad\u0000id"}, "id contains a NUL character"),
    ({"name": "Bit\u0000coin"}, "name contains a NUL character"),
    ({"symbol": "b\u0000tc"}, "symbol contains a NUL character"),
]


@pytest.fixture(scope="module")
def recorded_items() -> list[dict[str, Any]]:
    """The recorded CoinGecko page as plain dicts (floats are fine for building items)."""
    items: list[dict[str, Any]] = json.loads(GECKO_PAGE.read_text(encoding="utf-8"))
    return items


def test_coingecko_items_out_of_bounds_are_rejected_with_a_reason(
    recorded_items: list[dict[str, Any]]
) -> None:
    texts = [_hostile_item({**recorded_items[0], "id": f"coin-{n}"}, **changes)
             if "id" not in changes else _hostile_item(recorded_items[0], **changes)
             for n, (changes, _) in enumerate(GECKO_CASES)]
    texts.append(json.dumps(recorded_items[1]))  # a clean item after them
    with ReplayUpstream() as server:
        (batch,) = gecko_batches(server, "[" + ",".join(texts) + "]")
    reasons = {r.location: r.reason for r in batch.rejects}
    for index, (_, expected) in enumerate(GECKO_CASES, start=1):
        assert reasons[f"page 1 item {index}"].startswith(expected), reasons
    assert [q.source_asset_id for q in batch.quotes] == [recorded_items[1]["id"]]
    # Every item is kept raw; a raw record is keyed by its coin id only when that id fits.
    assert len(batch.raw) == len(texts)
    keys = [r.source_key for r in batch.raw]
    assert "page 1 item 8" in keys and "page 1 item 9" in keys
    assert all("\x00" not in k and len(k) <= 300 for k in keys)


def test_coinpaprika_ticker_out_of_bounds_is_rejected() -> None:
    ticker = {"id": "btc-bitcoin", "name": "Bitcoin", "symbol": "BTC", "rank": 1,
              "circulating_supply": 1, "total_supply": 1, "max_supply": 0,
              "last_updated": "2022-01-30T12:00:00Z",
              "quotes": {"USD": {"price": "@P@", "volume_24h": 1, "market_cap": 1}}}
    for number, reason in (("1e200000", "out of range"), ("1e-60", "too precise")):
        text_ = json.dumps(ticker).replace('"@P@"', number)
        item = JsonItem(text_, parse_json_array(f"[{text_}]")[0].value)
        quote, why, _ = parse_ticker(item, "item 1", DriftReport())
        assert quote is None and why is not None
        assert why.startswith("quotes.USD.price: ") and reason in why
    text_ = json.dumps(ticker).replace('"@P@"', "36000.5")
    quote, why, _ = parse_ticker(JsonItem(text_, parse_json_array(f"[{text_}]")[0].value),
                                 "item 1", DriftReport())
    assert why is None and quote is not None and quote.price_usd == Decimal("36000.5")


def test_a_coingecko_run_with_hostile_items_succeeds_and_loads_the_rest(
    clean_db: Engine, base_env: dict[str, str], csv_dir: Path, upstream: ReplayUpstream,
) -> None:
    """Through HTTP and the loader: nothing out of bounds reaches a COPY and fails the batch."""
    served = upstream.state.coingecko_items
    hostile = {n: _hostile_item(json.loads(served[n]), **changes)
               for n, (changes, _) in enumerate(GECKO_CASES)}
    for n, text_ in hostile.items():
        served[n] = text_
    # A new field whose key PostgreSQL text cannot hold, and a huge one: drift events only.
    extra = json.loads(served[20])
    extra["evil\u0000key"], extra["k" * 5000] = 1, 2
    served[20] = json.dumps(extra)
    settings = replay_settings(base_env, csv_dir, upstream)
    job = run_sources(clean_db, settings, ["coingecko"])
    (run,) = job["runs"]
    assert run["status"] == "succeeded", run["error"]
    assert run["rejected"] == len(hostile)
    assert run["inserted"] == len(served) - len(hostile)
    with clean_db.connect() as conn:
        reasons = conn.execute(text(
            "SELECT reason FROM rejected_records WHERE source = 'coingecko'")).scalars().all()
        biggest = conn.execute(text(
            "SELECT max(length(price_usd::text)) FROM quotes")).scalar_one()
    expected = [GECKO_CASES[n][1] for n in hostile]
    assert len(reasons) == len(expected)
    assert all(any(r.startswith(e) for r in reasons) for e in expected), reasons
    assert biggest < 80
    with clean_db.connect() as conn:
        fields = conn.execute(text(
            "SELECT field FROM drift_events WHERE kind = 'new'")).scalars().all()
    assert "evil\ufffdkey" in fields and max(len(f) for f in fields) <= 203
