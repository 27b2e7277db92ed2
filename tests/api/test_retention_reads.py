"""Reads across retention's horizons: candles, as_of, history and their exports give what the
full rows gave, from the rollups past the horizon, and say which resolution answered."""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, text

from shared.config import Settings
from shared.queries import rollup_history
from shared.storage.partitions import KNOWN, QUOTES, maintain, unit
from shared.storage.retention import expire
from tests.helpers.partitions import drop_expirable_partitions, ensure_quote_partitions
from tests.helpers.plans import index_rows

UTC = timezone.utc
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
FULL_DAYS = 30
# The quotes' horizon after expiry: the start of the week partition holding the cutoff.
HORIZON = unit(QUOTES, NOW - timedelta(days=FULL_DAYS), NOW)[0]
AROUND = HORIZON - timedelta(hours=3)  # 6 hours of quotes: 3 folded, 3 kept whole
OLD = datetime(NOW.year - 6, 3, 4, tzinfo=UTC)  # a year's partition, folded twice (daily)


def _fill(conn: Any, start: datetime, hours: int) -> None:
    """Quotes every 7 minutes at two sources, prices that move, some rows with their own
    OHLC (as CSV history rows carry), a few without a price."""
    conn.execute(text("""
        INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd,
                            volume_24h_usd, market_cap_usd, open_usd, high_usd, low_usd,
                            close_usd)
        SELECT 1, s, :start + n * interval '7 minutes', 'tst',
               CASE WHEN n % 11 = 5 THEN NULL ELSE round((100 + 10 * sin(n / 3.0))::numeric, 4)
               END, 1000 + n, 5000 + n,
               CASE WHEN n % 4 = 0 THEN 99.5 END, CASE WHEN n % 4 = 0 THEN 130 END,
               CASE WHEN n % 4 = 0 THEN 70 + n % 3 END, CASE WHEN n % 4 = 0 THEN 101 END
        FROM generate_series(0, :hours * 60 / 7 - 1) n, unnest(ARRAY['coingecko', 'csv']) s
        """), {"start": start, "hours": hours})


@pytest.fixture
def coin(clean_db: Engine) -> Iterator[Engine]:
    """One asset's quotes around the horizon and a year back; horizons and rollups emptied
    after (empty partitions other tests left, which retention would fold, dropped first)."""
    drop_expirable_partitions(clean_db, unit(QUOTES, AROUND, NOW)[0])
    ensure_quote_partitions(clean_db, AROUND, AROUND + timedelta(hours=6), OLD,
                            OLD + timedelta(days=2))
    with clean_db.begin() as conn:
        conn.execute(text("INSERT INTO assets (id, slug, symbol, name) "
                          "VALUES (1, 'testcoin', 'TST', 'Test Coin')"))
        _fill(conn, AROUND, 6)
        _fill(conn, OLD, 48)
    yield clean_db
    with clean_db.begin() as conn:
        conn.execute(text("TRUNCATE retention_horizons, rollup_folds, quotes_hourly, "
                          "quotes_daily"))
    KNOWN.forget()
    maintain(clean_db)


def _expire(engine: Engine, settings: Settings, hourly_days: int | None = None) -> None:
    expire(engine, dataclasses.replace(settings, quotes_full_resolution_days=FULL_DAYS,
                                       quotes_hourly_days=hourly_days), NOW)


def _get(client: Any, url: str) -> Any:
    response = client.get(url)
    assert response.status_code == 200, (url, response.get_data(as_text=True)[:500])
    return response.get_json()


def _ndjson(client: Any, url: str) -> list[dict[str, Any]]:
    response = client.get(url + "&format=ndjson")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


def _q(moment: datetime) -> str:
    return quote(moment.isoformat())


def _without(rows: list[dict[str, Any]], key: str = "resolution") -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != key} for row in rows]


def test_candles_across_the_horizon_equal_the_full_rows_and_name_their_resolution(
        coin: Engine, client: Any, settings: Settings) -> None:
    around = (f"/data/testcoin/candles?source=coingecko&since={_q(AROUND)}"
              f"&until={_q(AROUND + timedelta(hours=6) - timedelta(seconds=1))}")
    old = f"/data/testcoin/candles?source=csv&since={_q(OLD)}&until={_q(OLD + timedelta(2))}"
    before = {interval: _get(client, f"{around}&interval={interval}")
              for interval in ("1h", "4h")}
    old_before = _ndjson(client, f"{old}&interval=1d")
    assert [c["quotes"] for c in before["1h"]["data"]] == [9, 9, 8, 9, 8, 8]
    assert {c["resolution"] for c in before["1h"]["data"]} == {"full"}

    _expire(coin, settings)
    after = {interval: _get(client, f"{around}&interval={interval}")
             for interval in ("1h", "4h")}
    # The same candles, pages and gaps; the three hours before the horizon from the rollup.
    for interval in ("1h", "4h"):
        for key in ("data", "gaps", "pagination", "interval"):
            was, now = before[interval][key], after[interval][key]
            assert (_without(now) if key == "data" else now) == (
                _without(was) if key == "data" else was), (interval, key)
    assert [c["resolution"] for c in after["1h"]["data"]] == ["hourly"] * 3 + ["full"] * 3
    # 4h buckets start at 00, 04, ... UTC: the horizon (a midnight) never splits one.
    assert [(c["bucket_start"], c["resolution"]) for c in after["4h"]["data"]] == [
        ((HORIZON - timedelta(hours=4)).isoformat(), "hourly"), (HORIZON.isoformat(), "full")]

    # Hourly rollups a year past: folded again into days, which answer 1d candles.
    _expire(coin, settings, hourly_days=365)
    old_after = _ndjson(client, f"{old}&interval=1d")
    assert _without(old_after) == _without(old_before)
    assert [c["resolution"] for c in old_after] == ["daily", "daily", None]  # None: empty
    # A day cannot answer an hour: the range (all before the hourly horizon) is a gap that
    # says why, and the 1d candles have only the day with no quote as a gap.
    hours = _get(client, f"{old}&interval=1h")
    assert hours["data"] == [] and hours["gaps"] == [{
        "start": OLD.isoformat(), "end": (OLD + timedelta(hours=49)).isoformat(),
        "reason": "daily_rollups_only"}]
    assert [g["reason"] for g in after["1h"]["gaps"]] in ([], ["no_quotes"])
    days = _get(client, f"{old}&interval=1d")
    assert [g["reason"] for g in days["gaps"]] == ["no_quotes"]


def test_as_of_across_the_horizon(coin: Engine, client: Any, settings: Settings) -> None:
    moments = [HORIZON - timedelta(hours=1), HORIZON - timedelta(minutes=50),
               HORIZON + timedelta(hours=1)]
    urls = [f"/data/testcoin/as_of?at={_q(at)}&source=coingecko" for at in moments]
    before = [_get(client, url)["quotes"] for url in urls]
    _expire(coin, settings)
    after = [_get(client, url)["quotes"] for url in urls]
    # An hour's end: its last quote, as stored (its close, price, volume and cap).
    assert _without(after[0]) == _without(before[0]) and after[0][0]["resolution"] == "hourly"
    # Inside an hour: what the rollup knows by then is the hour's open, at its first time.
    (inside,) = after[1]
    first = HORIZON - timedelta(minutes=54)  # the first quote of that hour (7-minute steps)
    assert (inside["observed_at"], inside["resolution"]) == (first.isoformat(), "hourly")
    assert inside["price_usd"] is not None and inside["volume_24h_usd"] is None
    assert after[2] == before[2] and after[2][0]["resolution"] == "full"


def _pages(client: Any, url: str, size: int, by_cursor: bool) -> tuple[list[Any], int]:
    """Every item of a history listing, page by page (cursor or page numbers); its total."""
    items: list[Any] = []
    body = _get(client, f"{url}&page_size={size}")
    while True:
        items += body["data"]
        following = body["pagination"].get("next_cursor")
        if not following:
            return items, body["pagination"]["total"]
        page = 1 + len(items) // size
        body = _get(client, f"{url}&page_size={size}&" + (
            f"cursor={following}" if by_cursor else f"page={page}"))


def test_history_pages_and_export_go_on_past_the_horizon_with_one_row_per_bucket(
        coin: Engine, client: Any, settings: Settings) -> None:
    url = (f"/data/testcoin/history?since={_q(AROUND)}"
           f"&until={_q(AROUND + timedelta(hours=6))}")
    before, total_before = _pages(client, f"{url}&total=true", 500, True)
    _expire(coin, settings)
    after, total = _pages(client, f"{url}&total=true", 7, True)
    assert _pages(client, f"{url}&total=true", 7, False) == (after, total)
    # Without total=true no count is read (null); page numbers find where the rollup rows
    # start without it too, also on a page that holds no full row (page 11 of 5: rows 50-54).
    assert _pages(client, url, 7, True) == (after, None)
    assert _pages(client, url, 5, False) == (after, None)
    assert _ndjson(client, url) and [
        (r["observed_at"], r["source"], r["price_usd"], r["resolution"])
        for r in _ndjson(client, url)] == [
        (datetime.fromisoformat(r["observed_at"]).isoformat(), r["source"], r["price_usd"],
         r["resolution"]) for r in after]
    kept = [r for r in before if datetime.fromisoformat(r["observed_at"]) >= HORIZON]
    folded = [r for r in after if r["resolution"] == "hourly"]
    # The full rows as they were, then one row per hour and source, newest first.
    assert after[:len(kept)] == [{**r, "resolution": "full"} for r in kept]
    assert after[len(kept):] == folded and total == len(after) == len(kept) + 6
    assert [(r["bucket_start"], r["source"]) for r in folded] == [
        ((HORIZON - timedelta(hours=h)).isoformat(), s) for h in (1, 2, 3)
        for s in ("csv", "coingecko")]
    for row in folded:  # the hour's last quote's time, its close as the price
        last = max((r for r in before if r["source"] == row["source"]
                    and row["bucket_start"] <= r["observed_at"] < row["bucket_end"]),
                   key=lambda r: r["observed_at"])
        assert row["observed_at"] == last["observed_at"]
        assert row["price_usd"] == (last["close_usd"] or last["price_usd"])
        assert row["quotes"] == len([r for r in before if r["source"] == row["source"] and
                                     row["bucket_start"] <= r["observed_at"] < row["bucket_end"]])
    assert total_before == len(before)


def test_a_row_written_later_below_the_horizon_is_read_once_folded(
        coin: Engine, client: Any, settings: Settings) -> None:
    url = (f"/data/testcoin/history?source=coingecko&since={_q(AROUND)}"
           f"&until={_q(AROUND + timedelta(hours=6))}&page_size=500")
    _expire(coin, settings)
    folded = _get(client, url)["data"]
    late = AROUND + timedelta(minutes=30, seconds=1)
    ensure_quote_partitions(coin, late)  # the writer makes the expired week's partition again
    with coin.begin() as conn:
        conn.execute(text(
            "INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd) "
            "VALUES (1, 'coingecko', :t, 'tst', 999)"), {"t": late})
    assert _get(client, url)["data"] == folded  # not read until folded
    _expire(coin, settings)
    merged = _get(client, url)["data"]
    hour = AROUND.isoformat()
    (was,), (now,) = ([r for r in rows if r.get("bucket_start") == hour]
                      for rows in (folded, merged))
    assert (now["high_usd"], now["quotes"]) == ("999", was["quotes"] + 1)
    assert [r for r in merged if r is not now] == [r for r in folded if r is not was]


def test_a_history_page_reads_only_the_rollup_rows_it_shows(
        coin: Engine, client: Any, settings: Settings) -> None:
    """The page's rollup read stops at offset + limit rows of the 51 buckets (3 around the
    horizon, 48 a year back): its cost does not grow with the history kept."""
    _expire(coin, settings)
    # The 25 full rows are page 1; page 2 starts the rollups with no count of the full rows.
    page = _get(client, "/data/testcoin/history?source=coingecko&page=2&page_size=25")
    assert [r["resolution"] for r in page["data"]] == ["hourly"] * 25
    assert page["pagination"]["total"] is None
    with coin.connect() as conn:
        params = rollup_history._params(conn, 1, "coingecko", None, None, None)
        params.update(offset=3, limit=5, reach=8)
        (plan,) = conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) "
                                    + rollup_history._statement(1, False).text),
                               params).scalar_one()
        everything = rollup_history.count(conn, 1, "coingecko", None, None)
    assert everything == 51 and index_rows(plan["Plan"]) == 8
