"""The storage and long-run bench cases' logic on a tiny real load, on real PostgreSQL.

Bytes per quote add up, ticks land at their simulated times with moved prices, raw rows follow
the simulated clock, and the capacity profiles' arithmetic holds. Nothing here times anything.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
from sqlalchemy import Engine, text

from bench.capacity import (
    DEFAULT_SCHEDULE, EARLIER, PROFILES, RAW_GRAIN_DAYS, Bytes, Schedule, disk_bytes, kept_days,
    render,
)
from bench.longrun import (
    bytes_per_row, growth_per_day, move_raw, raw_item_table, retention_step, simulated_days,
    tick_times, usage_step,
)
from bench.ticks import MovingUpstream, grown, per_unit, run_job, stamp, table_sizes, vacuum
from shared.config import load_settings

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def moving() -> Iterator[MovingUpstream]:
    """300 CoinGecko coins (2 pages), 40 CoinPaprika tickers, ticking."""
    server = MovingUpstream(300, 40).start()
    yield server
    server.stop()


def _quotes(engine: Engine, source: str) -> list[tuple[datetime, str]]:
    with engine.connect() as conn:
        return [(r[0], str(r[1])) for r in conn.execute(text(
            "SELECT observed_at, price_usd FROM quotes WHERE source = :s "
            "AND source_asset_id = 'bitcoin' ORDER BY observed_at"), {"s": source})]


def test_ticks_store_a_quote_per_coin_at_the_simulated_time(
        clean_db: Engine, base_env: dict[str, str], moving: MovingUpstream) -> None:
    settings = load_settings({**base_env, **moving.env()})
    vacuum(clean_db)
    before = table_sizes(clean_db)
    counts = []
    for tick in range(3):
        assert moving.tick(T0 + timedelta(seconds=300 * tick)) == 340
        job = run_job(clean_db, settings)
        assert job["status"] == "succeeded", job
        assert {s: r["fetched"] for s, r in job["runs"].items()} == {
            "coingecko": 300, "coinpaprika": 40}
        with clean_db.connect() as conn:
            counts.append(conn.execute(text("SELECT count(*) FROM quotes")).scalar_one())
    # Every tick is a new quote per coin: a moved price at the tick's own (simulated) time.
    assert counts == [340, 680, 1020]
    stored = _quotes(clean_db, "coingecko")
    assert [at for at, _ in stored] == [T0 + timedelta(seconds=300 * t) for t in range(3)]
    assert len({price for _, price in stored}) == 3
    vacuum(clean_db)
    delta = grown(before, table_sizes(clean_db))
    assert {"quotes", "current_quotes", "assets"} <= set(delta)
    shares = per_unit(delta, 1020)
    # `all` is the sum of the tables' growth over the quotes, each table split three ways.
    assert shares["all"] == pytest.approx(sum(d["total"] for d in delta.values()) / 1020)
    assert sum(v for k, v in shares.items() if k != "all") == pytest.approx(shares["all"])
    for d in delta.values():
        assert d["total"] == d["heap"] + d["index"] + d["toast"]
    assert 100 < shares["quotes"] < 2000  # a quote row and its key, not a page per quote
    rows = bytes_per_row(clean_db)
    assert rows["quotes"] == pytest.approx(table_sizes(clean_db)["quotes"]["total"] / 1020)


def test_partitions_are_summed_under_their_table(clean_db: Engine) -> None:
    sizes = table_sizes(clean_db)
    assert "quotes" in sizes and not any(name.startswith("quotes_p") for name in sizes)
    with clean_db.connect() as conn:
        leaves = conn.execute(text(
            "SELECT sum(pg_relation_size(i.inhrelid) + pg_relation_size(i.inhrelid, 'fsm') "
            "+ pg_relation_size(i.inhrelid, 'vm') + pg_indexes_size(i.inhrelid)) "
            "FROM pg_inherits i WHERE i.inhparent = 'quotes'::regclass")).scalar_one()
    assert sizes["quotes"]["heap"] + sizes["quotes"]["index"] == leaves


def test_per_unit_and_growth_arithmetic() -> None:
    before = {"quotes": {"heap": 100, "index": 0, "toast": 0, "total": 100}}
    after = {"quotes": {"heap": 2100, "index": 1000, "toast": 0, "total": 3100},
             "raw": {"heap": 100, "index": 0, "toast": 900, "total": 1000},
             "same": {"heap": 5, "index": 0, "toast": 0, "total": 5}}
    delta = grown({**before, "same": after["same"]}, after)
    assert set(delta) == {"quotes", "raw"}
    assert per_unit(delta, 10) == {"quotes": 300.0, "raw": 100.0, "all": 400.0}
    with pytest.raises(ValueError):
        per_unit(delta, 0)


def test_simulated_clock() -> None:
    days = simulated_days(datetime(2026, 12, 7, 19, 30, tzinfo=timezone.utc), 3)
    assert days == [datetime(2026, 12, d, tzinfo=timezone.utc) for d in (4, 5, 6)]
    assert tick_times(days[0], 4) == [days[0] + timedelta(hours=h) for h in (0, 6, 12, 18)]
    assert stamp(T0 + timedelta(microseconds=123_456), True) == "2026-11-02T00:00:00.123Z"
    assert stamp(T0, False) == "2026-11-02T00:00:00Z"
    records = [{"database": b} for b in (100, 300, 500, 550, 560)]
    assert growth_per_day(records, 1, 3) == 200
    assert growth_per_day(records, 3, 5) == 30


def test_served_items_move_and_stay_json(moving: MovingUpstream) -> None:
    moving.tick(T0)
    first = json.loads(moving.server.state.coingecko_items[0])
    moving.tick(T0 + timedelta(days=1))
    second = json.loads(moving.server.state.coingecko_items[0])
    assert first["last_updated"] == "2026-11-02T00:00:00.000Z"
    assert second["last_updated"] == "2026-11-03T00:00:00.000Z"
    assert first["current_price"] != second["current_price"]
    assert 0.9 < second["current_price"] / first["current_price"] < 1.1
    ticker = json.loads(moving.server.state.coinpaprika_items[0])
    assert ticker["last_updated"] == "2026-11-03T00:00:00Z"


def test_raw_rows_follow_the_simulated_clock(
        clean_db: Engine, base_env: dict[str, str], moving: MovingUpstream) -> None:
    table = raw_item_table(clean_db)
    if table is None:
        pytest.skip("this tree keeps API items as raw_records rows (not partitioned)")
    settings = load_settings({**base_env, **moving.env()})
    at = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=40)
    moving.tick(at)
    with clean_db.connect() as conn:
        since = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    assert run_job(clean_db, settings)["status"] == "succeeded"
    assert move_raw(clean_db, table, since, at) > 0
    with clean_db.connect() as conn:
        times = set(conn.execute(text(f"SELECT fetched_at FROM {table}")).scalars())
    assert times == {at}


def test_capacity_profiles() -> None:
    per_row = Bytes(quote=250, raw=100, hourly=150, daily=150)
    assert DEFAULT_SCHEDULE.quotes_per_day == 19_000 * 288
    assert kept_days(None, 7, 365) == 365 and kept_days(14, 7, 365) == 21
    assert kept_days(14, 7, 10) == 10
    year = disk_bytes(PROFILES["year-100gb"], DEFAULT_SCHEDULE, per_row, 365)
    q = 19_000 * 288
    assert year["quotes"] == q * 250 * 21
    assert year["raw"] == q * 100 * (7 + RAW_GRAIN_DAYS) == q * 100 * 14
    # Hourly rollups in monthly partitions: kept up to 90 days + a month past the full 21.
    assert year["hourly"] == 19_000 * 24 * 150 * (90 + 31 - 21)
    assert year["daily"] == 19_000 * 150 * (365 - 121)
    later = disk_bytes(PROFILES["year-100gb"], DEFAULT_SCHEDULE, per_row, 3 * 365)
    assert later["hourly"] == year["hourly"]
    assert later["daily"] == 19_000 * 150 * (3 * 365 - 121)
    assert year["all"] == pytest.approx(sum(v for k, v in year.items() if k != "all"))
    # The earlier widths: a month of raw past its horizon, hourly rollups in yearly partitions
    # (within a year none is dropped).
    before = disk_bytes(PROFILES["year-100gb"], DEFAULT_SCHEDULE, per_row, 365, EARLIER)
    assert before["raw"] == q * 100 * (7 + 31) and before["quotes"] == year["quotes"]
    assert before["hourly"] == 19_000 * 24 * 150 * (365 - 21) and before["daily"] == 0
    keep = disk_bytes(PROFILES["keep-all"], DEFAULT_SCHEDULE, per_row, 365)
    assert keep["all"] == q * 350 * 365 and keep["hourly"] == 0
    assert PROFILES["keep-all"].env() == {}
    # An hourly schedule makes one hourly row per coin a day, not 24.
    assert Schedule(100, 3_600).hourly_per_day == 2_400
    assert PROFILES["year-100gb"].env() == {
        "RAW_RETENTION_DAYS": "7", "QUOTES_FULL_RESOLUTION_DAYS": "14", "QUOTES_HOURLY_DAYS": "90"}
    assert "`year-100gb`" in render(per_row, [DEFAULT_SCHEDULE], 365)


def test_the_simulated_upkeep_is_beats(clean_db: Engine, base_env: dict[str, str]) -> None:
    # The long run calls what beat's maintain_partitions calls, with the simulated now.
    settings = load_settings({**base_env, **PROFILES["year-100gb"].env()})
    expire, usage = retention_step(clean_db, settings), usage_step(clean_db)
    assert expire is not None and usage is not None
    usage(T0)
    assert expire(T0) is not None
