"""Candles (bucket edges, gaps, CSV OHLC), point-in-time lookups and the CSV/NDJSON exports."""
from __future__ import annotations

import csv
import io
import json
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, text

from tests.helpers.partitions import ensure_quote_partitions

T0 = "2025-01-01T00:00:00+00:00"
# (source, observed_at, price, volume, open, high, low, close)
QUOTES = [
    ("coingecko", "2025-01-01T00:00:00+00:00", "100.10", "5", None, None, None, None),
    ("coingecko", "2025-01-01T00:30:00+00:00", "105.5", "6", None, None, None, None),
    ("coingecko", "2025-01-01T00:59:59.999999+00:00", "99.000000000000000000001", "7",
     None, None, None, None),
    ("coingecko", "2025-01-01T01:00:00+00:00", "101", "8", None, None, None, None),
    ("coingecko", "2025-01-01T04:10:00+00:00", "110", None, None, None, None, None),
    ("csv", "2025-01-01T00:00:00+00:00", "2", "9", "1", "3", "0.5", "2"),
    ("csv", "2025-01-02T00:00:00+00:00", "4.25", "9", "2", "4.5", "1.75", "4.25"),
]


@pytest.fixture
def coin(clean_db: Engine) -> Engine:
    """One asset with the quotes above, inserted as the loader stores them."""
    ensure_quote_partitions(clean_db, *(row[1] for row in QUOTES))
    with clean_db.begin() as conn:
        conn.execute(text("INSERT INTO assets (id, slug, symbol, name) "
                          "VALUES (1, 'testcoin', 'TST', 'Test Coin')"))
        for source, at, price, volume, o, h, low, c in QUOTES:
            conn.execute(text(
                "INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd, "
                "volume_24h_usd, open_usd, high_usd, low_usd, close_usd) VALUES (1, :s, :t, "
                "'tst', :p, :v, :o, :h, :l, :c)"),
                {"s": source, "t": at, "p": price, "v": volume, "o": o, "h": h, "l": low,
                 "c": c})
    return clean_db


def _get(client: Any, url: str, status: int = 200) -> Any:
    response = client.get(url)
    assert response.status_code == status, (url, response.get_data(as_text=True)[:500])
    return response.get_json()


def _q(moment: str) -> str:
    return quote(moment)


def test_hourly_candles_edges_convention_and_gaps(coin: Engine, client: Any) -> None:
    url = (f"/data/testcoin/candles?source=coingecko&interval=1h&since={_q(T0)}"
           f"&until={_q('2025-01-01T04:59:00Z')}")
    body = _get(client, url)
    assert body["pagination"]["total"] == 5  # buckets 00 .. 04, empty ones included
    first, second, last = body["data"]
    # 00:59:59.999999 is in the 00:00 bucket, 01:00:00 starts the next one.
    assert first == {
        "bucket_start": "2025-01-01T00:00:00+00:00", "bucket_end": "2025-01-01T01:00:00+00:00",
        "open": "100.10", "high": "105.5", "low": "99.000000000000000000001",
        "close": "99.000000000000000000001", "volume": "7", "quotes": 3,
        "first_observed_at": "2025-01-01T00:00:00+00:00",
        "last_observed_at": "2025-01-01T00:59:59.999999+00:00", "resolution": "full"}
    assert (second["bucket_start"], second["open"], second["close"], second["quotes"]) == (
        "2025-01-01T01:00:00+00:00", "101", "101", 1)
    assert last["bucket_start"] == "2025-01-01T04:00:00+00:00" and last["volume"] is None
    assert body["gaps"] == [{"start": "2025-01-01T02:00:00+00:00",
                             "end": "2025-01-01T04:00:00+00:00", "reason": "no_quotes"}]
    four = _get(client, url.replace("interval=1h", "interval=4h"))
    assert [(c["bucket_start"], c["quotes"]) for c in four["data"]] == [
        ("2025-01-01T00:00:00+00:00", 4), ("2025-01-01T04:00:00+00:00", 1)]
    assert four["gaps"] == []


def test_candle_pages_count_buckets_and_the_cursor_follows(coin: Engine, client: Any) -> None:
    url = (f"/data/testcoin/candles?source=coingecko&interval=1h&since={_q(T0)}"
           f"&until={_q('2025-01-01T04:59:00Z')}&page_size=2")
    starts, gaps, pages, cursor = [], [], 0, None
    while True:
        body = _get(client, url + (f"&cursor={cursor}" if cursor else ""))
        pages += 1
        starts += [c["bucket_start"][11:16] for c in body["data"]]
        gaps += body["gaps"]
        cursor = body["pagination"]["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and starts == ["00:00", "01:00", "04:00"]
    assert gaps == [{"start": "2025-01-01T02:00:00+00:00", "end": "2025-01-01T04:00:00+00:00",
                     "reason": "no_quotes"}]
    page2 = _get(client, url + "&page=2")
    assert page2["data"] == [] and len(page2["gaps"]) == 1
    # A page past the end is empty (page 1,000,000 of 500 hours would be past year 9999).
    deep = _get(client, url.replace("page_size=2", "page_size=500") + "&page=1000000")
    assert deep["data"] == [] and deep["gaps"] == [] and deep["pagination"]["total"] == 5
    # A cursor of another source is refused, naming the cursor.
    other = url.replace("source=coingecko", "source=csv")
    assert "cursor" in _get(client, f"{other}&cursor={body_cursor(client, url)}", 422)[
        "errors"]["query"]


def body_cursor(client: Any, url: str) -> str:
    """The next cursor of the first page of `url`."""
    cursor: str = _get(client, url)["pagination"]["next_cursor"]
    return cursor


def test_csv_rows_that_carry_ohlc_are_used_as_they_are(coin: Engine, client: Any) -> None:
    body = _get(client, f"/data/testcoin/candles?source=csv&interval=1d&since={_q(T0)}"
                        f"&until={_q('2025-01-02T12:00:00Z')}")
    assert [(c["open"], c["high"], c["low"], c["close"]) for c in body["data"]] == [
        ("1", "3", "0.5", "2"), ("2", "4.5", "1.75", "4.25")]


def test_candle_arguments_are_422_naming_the_field(coin: Engine, client: Any) -> None:
    base = "/data/testcoin/candles?"
    for query, field in (("interval=1h", "source"), ("source=csv&interval=2h", "interval"),
                         ("source=csv&format=xml", "format"),
                         ("source=csv&since=2020-01-01T00:00:00Z&until=2022-01-01T00:00:00Z",
                          "until")):
        assert field in _get(client, base + query, 422)["errors"]["query"], query
    assert _get(client, "/data/nope/candles?source=csv", 404)["code"] == 404


def test_as_of_exact_hit_stale_and_before_the_first_quote(coin: Engine, client: Any) -> None:
    exact = _get(client, f"/data/testcoin/as_of?at={_q('2025-01-01T01:00:00Z')}")
    by_source = {q["source"]: q for q in exact["quotes"]}
    assert by_source["coingecko"]["observed_at"] == "2025-01-01T01:00:00+00:00"
    assert by_source["coingecko"]["age_seconds"] == 0
    assert by_source["coingecko"]["price_usd"] == "101"
    assert by_source["csv"]["observed_at"] == T0 and by_source["csv"]["age_seconds"] == 3600
    stale = _get(client, f"/data/testcoin/as_of?at={_q('2025-01-01T03:30:00Z')}&source=coingecko")
    assert [(q["observed_at"], q["age_seconds"]) for q in stale["quotes"]] == [
        ("2025-01-01T01:00:00+00:00", 9000.0)]
    before = _get(client, f"/data/testcoin/as_of?at={_q('2024-12-31T23:59:59Z')}")
    assert before["quotes"] == [] and before["asset"]["slug"] == "testcoin"
    assert "at" in _get(client, "/data/testcoin/as_of", 422)["errors"]["query"]


def test_as_of_batch_in_order_unknown_assets_and_the_cap(coin: Engine, client: Any) -> None:
    pairs = ["testcoin@2025-01-01T00:45:00Z", "nope@2025-01-01T00:00:00Z",
             "1@2025-01-02T00:00:00Z"]
    body = _get(client, "/data/as_of?" + "&".join(f"pair={_q(p)}" for p in pairs)
                + "&source=coingecko")
    first, unknown, third = body["data"]
    assert first["quotes"][0]["observed_at"] == "2025-01-01T00:30:00+00:00"
    assert first["quotes"][0]["age_seconds"] == 900
    assert "error" in unknown and unknown["asset_ref"] == "nope"
    assert third["quotes"][0]["observed_at"] == "2025-01-01T04:10:00+00:00"
    too_many = "&".join(f"pair={_q('testcoin@2025-01-01T00:00:00Z')}" for _ in range(101))
    assert "pair" in _get(client, f"/data/as_of?{too_many}", 422)["errors"]["query"]
    assert "pair" in _get(client, "/data/as_of?pair=testcoin", 422)["errors"]["query"]


HISTORY_RANGE = f"since={_q('2024-12-31T00:00:00Z')}&until={_q('2025-01-03T00:00:00Z')}"


def _json_history(client: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        body = _get(client, f"/data/testcoin/history?{HISTORY_RANGE}&page_size=3"
                            + (f"&cursor={cursor}" if cursor else ""))
        rows += body["data"]
        cursor = body["pagination"]["next_cursor"]
        if cursor is None:
            return rows


def test_history_csv_export_is_streamed_exact_and_the_json_pages_rows(
        coin: Engine, client: Any) -> None:
    response = client.get(f"/data/testcoin/history?{HISTORY_RANGE}&format=csv")
    assert response.status_code == 200 and response.is_streamed
    assert response.mimetype == "text/csv"
    exported = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    pages = _json_history(client)
    assert len(exported) == len(pages) == len(QUOTES)
    for row, record in zip(exported, pages):
        for field, value in row.items():
            if field in ("quality", "flags"):
                continue
            expected = record[field]
            assert value == ("" if expected is None else str(expected)), (field, row, record)
        assert row["quality"] == record["quality"]["status"]
    assert "99.000000000000000000001" in {row["price_usd"] for row in exported}


def test_ndjson_by_accept_and_candles_export_rows_for_empty_buckets(
        coin: Engine, client: Any) -> None:
    response = client.get(f"/data/testcoin/history?{HISTORY_RANGE}&source=csv",
                          headers={"Accept": "application/x-ndjson"})
    assert response.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert [(r["observed_at"], r["close_usd"]) for r in lines] == [
        ("2025-01-02T00:00:00+00:00", "4.25"), (T0, "2")]
    exported = client.get(f"/data/testcoin/candles?source=coingecko&interval=1h"
                          f"&since={_q(T0)}&until={_q('2025-01-01T04:59:00Z')}&format=csv")
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert [(r["bucket_start"][11:16], r["quotes"], r["close"]) for r in rows] == [
        ("00:00", "3", "99.000000000000000000001"), ("01:00", "1", "101"), ("02:00", "0", ""),
        ("03:00", "0", ""), ("04:00", "1", "110")]


def test_export_keeps_the_range_cap(coin: Engine, client: Any) -> None:
    ensure_quote_partitions(coin, "2020-01-01T00:00:00+00:00")
    with coin.begin() as conn:
        conn.execute(text("INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, "
                          "price_usd) VALUES (1, 'csv', '2020-01-01T00:00:00Z', 'tst', 1)"))
    body = _get(client, "/data/testcoin/history?format=csv&source=csv", 422)
    assert "since" in body["errors"]["query"]


def test_candles_as_of_and_exports_count_as_reads(coin: Engine, settings: Any) -> None:
    from api import create_app

    client = create_app({"TESTING": True, "RATELIMIT_READS": "3/minute"},
                        settings=settings).test_client()
    urls = [f"/data/testcoin/candles?source=csv&{HISTORY_RANGE}",
            f"/data/testcoin/as_of?at={_q(T0)}",
            f"/data/testcoin/history?{HISTORY_RANGE}&format=csv",
            f"/data/as_of?pair={_q('testcoin@' + T0)}"]
    assert [client.get(url).status_code for url in urls] == [200, 200, 200, 429]


def test_data_asset_as_of_redirects_to_the_lookup(coin: Engine, client: Any) -> None:
    response = client.get(f"/data/testcoin?as_of={_q('2025-01-01T00:45:00+01:00')}")
    assert response.status_code == 307
    followed = client.get(f"/data/testcoin?as_of={_q('2025-01-01T00:45:00+01:00')}",
                          follow_redirects=True)
    assert followed.get_json()["as_of"] == "2024-12-31T23:45:00+00:00"
    assert followed.get_json()["quotes"] == []  # before the first quote, at every source
    assert "as_of" in _get(client, "/data/testcoin?as_of=yesterday", 422)["errors"]["query"]
    assert _get(client, "/data/testcoin")["asset"]["slug"] == "testcoin"
