"""Retention (shared.storage.retention): whole partitions folded into rollups equal to the
candles of the rows they replace, then dropped; raw partitions dropped; the settings."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
from sqlalchemy import Engine, text

from shared.config import ConfigError, Settings, load_settings
from shared.locks import partition_lock, try_lock, unlock
from shared.queries.candles import INTERVALS, CandleRange, candle_rows, floor_bucket
from shared.storage import retention
from shared.storage.partitions import KNOWN, QUOTES, RAW_LINE_BLOCKS, ensure, maintain, unit
from shared.storage.retention import expire
from shared.storage.rollups import TO_HOURLY, horizons
from tests.helpers.partitions import (
    drop_expirable_partitions,
    ensure_quote_partitions,
    partition_bounds,
)

UTC = timezone.utc
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
OLD = datetime(NOW.year - 6, 3, 4, tzinfo=UTC)  # a yearly partition of history
MIDDLE = floor_bucket(NOW - timedelta(days=60), timedelta(days=1))  # a weekly one
RECENT = NOW - timedelta(days=1)
KEYS = [(1, "coingecko"), (1, "csv"), (2, "coingecko")]
# The candle fields a rollup row holds, by the rollup's column.
_AS_CANDLE = {"bucket_start": "bucket_start", "open_usd": "open", "high_usd": "high",
              "low_usd": "low", "close_usd": "close", "volume_24h_usd": "volume",
              "quotes": "quotes", "first_observed_at": "first_observed_at",
              "last_observed_at": "last_observed_at"}

# Rows every 7 minutes for 30 hours from :start: prices that move, some rows carrying their
# own OHLC (CSV history does), a few without a price, volumes that change.
_FILL = text("""
INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd, volume_24h_usd,
                    market_cap_usd, open_usd, high_usd, low_usd, close_usd, flag_set)
SELECT :asset, :source, t, 'coin-' || :asset,
       CASE WHEN n % 11 = 5 THEN NULL ELSE round((100 + 10 * sin(n / 3.0))::numeric, 6) END,
       1000 + n, 5000 + 2 * n,
       CASE WHEN n % 4 = 0 THEN 99.5 + n % 7 END, CASE WHEN n % 4 = 0 THEN 120 + n % 5 END,
       CASE WHEN n % 4 = 0 THEN 80 - n % 3 END, CASE WHEN n % 4 = 0 THEN 101 + n % 9 END,
       CASE WHEN n % 13 = 0 THEN :flag_set END
FROM generate_series(0, 30 * 60 / 7) n, LATERAL (SELECT :start + n * interval '7 minutes') s(t)
""")


def _fill(engine: Engine, start: datetime, flag_set: int | None = None) -> None:
    ensure_quote_partitions(engine, start, start + timedelta(hours=31))
    with engine.begin() as conn:
        for asset, source in KEYS:
            conn.execute(_FILL, {"asset": asset, "source": source, "start": start,
                                 "flag_set": flag_set})


def _candles(engine: Engine, interval: str, start: datetime) -> dict[Any, list[dict[str, Any]]]:
    """Per key, the candles of the 30 hours from `start`, computed from the full rows."""
    step = INTERVALS[interval]
    first, end = floor_bucket(start, step), start + timedelta(hours=32)
    found = {}
    with engine.connect() as conn:
        for asset, source in KEYS:
            span = CandleRange(asset, source, step, start, end, first, (end - first) // step + 1)
            found[(asset, source)] = list(candle_rows(conn, span, first, end + step))
    return found


def _rollups(engine: Engine, table: str, start: datetime) -> dict[Any, list[dict[str, Any]]]:
    """Per key, the rollup rows of the 30 hours from `start`, written as candles."""
    found: dict[Any, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for asset, source in KEYS:
            rows = conn.execute(text(
                f"SELECT {', '.join(_AS_CANDLE)} FROM {table} WHERE asset_id = :a AND "
                "source = :s AND bucket_start >= :lo AND bucket_start < :hi "
                "ORDER BY bucket_start"), {"a": asset, "s": source, "lo": start - timedelta(
                    days=1), "hi": start + timedelta(days=2)}).mappings()
            found[(asset, source)] = [_candle_of(row) for row in rows]
    return found


def _candle_of(row: Any) -> dict[str, Any]:
    candle = {}
    for column, name in _AS_CANDLE.items():
        value = row[column]
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat()
        elif value is not None and name != "quotes":
            value = str(value)
        candle[name] = value
    return candle


def _same(candles: dict[Any, list[dict[str, Any]]]) -> dict[Any, list[dict[str, Any]]]:
    """The candles without bucket_end and resolution (a rollup row has its start only)."""
    return {key: [{k: v for k, v in c.items() if k not in ("bucket_end", "resolution")}
                  for c in rows]
            for key, rows in candles.items()}


def _partitions(engine: Engine, table: str) -> set[tuple[datetime, datetime]]:
    return set(partition_bounds(engine, table))


def _leftovers(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND NOT relispartition "
            "AND relname ~ '_p[0-9]{8}_[0-9]{8}$'")).scalars())


@pytest.fixture
def quotes_db(clean_db: Engine) -> Iterator[Engine]:
    """Quotes in three partitions: a year of history, a week 60 days back, yesterday's week;
    a flag set and a flag document in the old ones. Horizons and rollups emptied after."""
    drop_expirable_partitions(clean_db, unit(QUOTES, MIDDLE, NOW)[0])
    with clean_db.begin() as conn:
        flag_set = conn.execute(text(
            "INSERT INTO flag_sets (source, kinds, thresholds, quotes) VALUES "
            "('coingecko', 1, '{}', 1000) RETURNING id")).scalar_one()
    for start in (OLD, MIDDLE, RECENT):
        _fill(clean_db, start, flag_set)
    with clean_db.begin() as conn:
        conn.execute(text(
            "INSERT INTO quote_flags (asset_id, source, observed_at, flags) VALUES "
            "(1, 'coingecko', :a, '[]'), (1, 'coingecko', :b, '[]')"), {"a": MIDDLE, "b": RECENT})
    yield clean_db
    with clean_db.begin() as conn:
        conn.execute(text("TRUNCATE retention_horizons, rollup_folds, quotes_hourly, "
                          "quotes_daily"))
    KNOWN.forget()
    maintain(clean_db)


def _with(settings: Settings, **days: int | None) -> Settings:
    return dataclasses.replace(settings, **days)


def test_quotes_past_full_resolution_become_hourly_rollups_equal_to_their_candles(
        quotes_db: Engine, settings: Settings) -> None:
    hourly_before = {start: _candles(quotes_db, "1h", start) for start in (OLD, MIDDLE)}
    assert all(len(rows) == 30 for c in hourly_before.values() for rows in c.values())
    daily_before = _candles(quotes_db, "1d", OLD)
    recent_before = _candles(quotes_db, "1h", RECENT)
    partitions_before = _partitions(quotes_db, "quotes")
    with quotes_db.connect() as conn:
        rows_before = conn.execute(text("SELECT count(*) FROM quotes")).scalar_one()

    dropped = expire(quotes_db, _with(settings, quotes_full_resolution_days=30), NOW)

    cutoff = NOW - timedelta(days=30)
    gone = {b for b in partitions_before if b[1] <= cutoff}
    # Whole partitions, and only those past the cutoff; nothing left detached.
    assert {b for b in partitions_before if OLD in range_of(b) or MIDDLE in range_of(b)} <= gone
    assert len(dropped["quotes"]) == len(gone)
    assert _partitions(quotes_db, "quotes") == partitions_before - gone
    assert _leftovers(quotes_db) == []
    with quotes_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM quotes")).scalar_one() == rows_before // 3
        assert conn.execute(text("SELECT count(*) FROM rollup_folds")).scalar_one() == 0
        assert horizons(conn)["quotes"] == max(high for _, high in gone)
        # The dropped quotes' flag documents and flag set counts went with them.
        assert conn.execute(text("SELECT observed_at FROM quote_flags")).scalars().all() == [
            RECENT]
        kept = conn.execute(text("SELECT count(*) FROM quotes WHERE flag_set IS NOT NULL"))
        assert conn.execute(text("SELECT quotes FROM flag_sets")).scalar_one() == (
            1000 - 2 * kept.scalar_one())
    for start, candles in hourly_before.items():
        assert _rollups(quotes_db, "quotes_hourly", start) == _same(candles)
    assert _candles(quotes_db, "1h", RECENT) == recent_before

    # Hourly rollups past QUOTES_HOURLY_DAYS (their year's partition) become daily ones.
    again = _with(settings, quotes_full_resolution_days=30, quotes_hourly_days=365)
    dropped = expire(quotes_db, again, NOW)
    assert [name[-17:-13] for name in dropped["quotes_hourly"]] == [str(OLD.year)]
    assert _rollups(quotes_db, "quotes_daily", OLD) == _same(daily_before)
    assert _rollups(quotes_db, "quotes_hourly", OLD) == {key: [] for key in KEYS}
    assert _rollups(quotes_db, "quotes_hourly", MIDDLE) == _same(hourly_before[MIDDLE])
    # A second run finds nothing more to do.
    assert expire(quotes_db, again, NOW) == {"quotes": [], "quotes_hourly": []}


def range_of(bounds: tuple[datetime, datetime]) -> Any:
    """A container answering `moment in range_of(b)` for [low, high)."""
    class _Range:
        def __contains__(self, moment: datetime) -> bool:
            return bounds[0] <= moment < bounds[1]
    return _Range()


def test_rows_written_later_for_an_expired_range_are_merged_into_the_rollup(
        quotes_db: Engine, settings: Settings) -> None:
    full = _with(settings, quotes_full_resolution_days=30)
    expire(quotes_db, full, NOW)
    before = _rollups(quotes_db, "quotes_hourly", MIDDLE)
    # A backfill brings two more quotes of an expired hour: the writer makes the partition
    # again, the next run merges them into the hour's rollup.
    late = MIDDLE + timedelta(hours=2, minutes=59)
    ensure_quote_partitions(quotes_db, late)
    with quotes_db.begin() as conn:
        conn.execute(text(
            "INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd, "
            "volume_24h_usd) VALUES (1, 'csv', :t, 'coin-1', 500, 7), "
            "(1, 'csv', :t - interval '1 hour 59 minutes', 'coin-1', 1, 8)"), {"t": late})
    expire(quotes_db, full, NOW)
    after = _rollups(quotes_db, "quotes_hourly", MIDDLE)
    assert after[(2, "coingecko")] == before[(2, "coingecko")]
    changed = {c["bucket_start"]: c for c in after[(1, "csv")]}
    for old in before[(1, "csv")]:
        new = changed[old["bucket_start"]]
        if old["bucket_start"] == (MIDDLE + timedelta(hours=1)).isoformat():
            assert (new["open"], new["low"], new["quotes"]) == ("1", "1", old["quotes"] + 1)
            assert new["close"] == old["close"]
        elif old["bucket_start"] == (MIDDLE + timedelta(hours=2)).isoformat():
            assert (new["close"], new["high"], new["volume"]) == ("500", "500", "7")
            assert new["open"] == old["open"] and new["quotes"] == old["quotes"] + 1
        else:
            assert new == old
    assert _leftovers(quotes_db) == []


def test_raw_partitions_past_raw_retention_are_dropped_whole(
        clean_db: Engine, settings: Settings) -> None:
    old = datetime(NOW.year - 3, 5, 17, tzinfo=UTC)
    ensure(clean_db, RAW_LINE_BLOCKS, [(old, old)])
    before = _partitions(clean_db, "raw_line_blocks")
    assert any(low <= old < high for low, high in before)
    try:
        dropped = expire(clean_db, _with(settings, raw_retention_days=400), NOW)
        cutoff = NOW - timedelta(days=400)
        assert _partitions(clean_db, "raw_line_blocks") == {
            b for b in before if b[1] > cutoff}
        assert len(dropped["raw_line_blocks"]) == len(before) - len(
            _partitions(clean_db, "raw_line_blocks"))
        assert _leftovers(clean_db) == []
    finally:
        KNOWN.forget()
        maintain(clean_db)


def test_unset_retention_keeps_everything(quotes_db: Engine, settings: Settings) -> None:
    before = _partitions(quotes_db, "quotes")
    assert expire(quotes_db, settings, NOW) == {}
    assert _partitions(quotes_db, "quotes") == before


@pytest.mark.parametrize("env, message", [
    ({"QUOTES_HOURLY_DAYS": "30"}, "QUOTES_HOURLY_DAYS must be greater than"),
    ({"QUOTES_FULL_RESOLUTION_DAYS": "30", "QUOTES_HOURLY_DAYS": "30"},
     "QUOTES_HOURLY_DAYS must be greater than QUOTES_FULL_RESOLUTION_DAYS"),
    ({"QUOTES_FULL_RESOLUTION_DAYS": "0"}, "QUOTES_FULL_RESOLUTION_DAYS must be >= 1"),
    ({"RAW_RETENTION_DAYS": "a week"}, "RAW_RETENTION_DAYS must be an integer"),
])
def test_retention_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_retention_settings_default_to_keeping_everything() -> None:
    settings = load_settings({"QUOTES_FULL_RESOLUTION_DAYS": "7", "QUOTES_HOURLY_DAYS": "90",
                              "RAW_RETENTION_DAYS": " "})
    assert (settings.quotes_full_resolution_days, settings.quotes_hourly_days,
            settings.raw_retention_days) == (7, 90, None)
    unset = load_settings({})
    assert (unset.quotes_full_resolution_days, unset.quotes_hourly_days,
            unset.raw_retention_days) == (None, None, None)


def test_a_busy_partition_lock_leaves_the_table_for_the_next_run(
        quotes_db: Engine, settings: Settings) -> None:
    before = _partitions(quotes_db, "quotes")
    with quotes_db.connect() as holder:  # a writer making a partition, as retention sees it
        assert try_lock(holder, partition_lock("quotes"))
        try:
            dropped = expire(quotes_db, _with(settings, quotes_full_resolution_days=30), NOW)
        finally:
            unlock(holder, partition_lock("quotes"))
    assert dropped == {"quotes": []}
    assert _partitions(quotes_db, "quotes") == before
    with quotes_db.connect() as conn:
        assert horizons(conn) == {}


def test_a_row_written_between_the_fold_and_the_detach_is_folded_too(
        quotes_db: Engine, settings: Settings) -> None:
    with quotes_db.connect() as conn:
        (part,) = [p for p in retention.expiring(conn, QUOTES, NOW - timedelta(days=30))
                   if p.low <= MIDDLE < p.high]
    retention._first_fold(quotes_db, TO_HOURLY, part)  # step 1 only, as a run killed after it
    folded = _rollups(quotes_db, "quotes_hourly", MIDDLE)
    with quotes_db.begin() as conn:  # a backfill writes into the still attached partition
        conn.execute(text(
            "INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd) "
            "VALUES (1, 'csv', :t, 'coin-1', 777)"), {"t": MIDDLE + timedelta(minutes=30)})
    expire(quotes_db, _with(settings, quotes_full_resolution_days=30), NOW)
    after = _rollups(quotes_db, "quotes_hourly", MIDDLE)
    first, *rest = after[(1, "csv")]
    assert (first["high"], first["quotes"]) == ("777", folded[(1, "csv")][0]["quotes"] + 1)
    assert rest == folded[(1, "csv")][1:]
    assert {k: v for k, v in after.items() if k != (1, "csv")} == {
        k: v for k, v in folded.items() if k != (1, "csv")}
    assert _leftovers(quotes_db) == []
