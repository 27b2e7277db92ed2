"""Time partitions (shared.storage.partitions): what a time gets, the plan, creation on demand."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import Engine, text

from shared.config import Settings
from shared.storage.partitions import (
    KNOWN,
    PARTITIONED_TABLES,
    QUOTES,
    RAW_LINE_BLOCKS,
    ROLLUP_TABLES,
    TooManyPartitions,
    maintain,
    plan,
    unit,
)
from tests.helpers.csv_runs import run_csv
from tests.helpers.partitions import drop_partitions, partition_bounds

UTC = timezone.utc
NOW = datetime(2026, 12, 9, 15, tzinfo=UTC)  # a Wednesday
# The tables' DEFAULT partitions (0: none) and partition counts, per partitioned table.
_PARTITIONED = text(
    "SELECT c.relname, p.partdefid::int, (SELECT count(*) FROM pg_inherits i "
    "WHERE i.inhparent = c.oid) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
    "ORDER BY 1")


def _day(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


def _covered(bounds: list[tuple[datetime, datetime]], moment: datetime) -> bool:
    return any(low <= moment < high for low, high in bounds)


@pytest.fixture
def restore_partitions(engine: Engine) -> Iterator[None]:
    """Make the next weeks' partitions again after a test that dropped some."""
    yield
    KNOWN.forget()
    maintain(engine)


def test_recent_times_get_their_grain_older_ones_a_year_ending_where_recent_starts() -> None:
    assert unit(QUOTES, NOW, NOW) == (_day(2026, 12, 7), _day(2026, 12, 14))
    assert unit(QUOTES, _day(2027, 3, 1), NOW) == (_day(2027, 3, 1), _day(2027, 3, 8))
    assert unit(RAW_LINE_BLOCKS, NOW, NOW) == (_day(2026, 12, 7), _day(2026, 12, 14))
    assert unit(QUOTES, _day(2013, 4, 28), NOW) == (_day(2013, 1, 1), _day(2014, 1, 1))
    # Recent starts on the Monday of the week a year back (2025-12-09 is a Tuesday).
    assert unit(QUOTES, _day(2025, 6, 1), NOW) == (_day(2025, 1, 1), _day(2025, 12, 8))
    assert unit(QUOTES, _day(2025, 12, 8), NOW) == (_day(2025, 12, 8), _day(2025, 12, 15))


def test_the_plan_covers_every_span_without_overlapping_what_exists() -> None:
    existing = [(_day(2020, 3, 1), _day(2020, 4, 1)), (_day(2026, 11, 30), _day(2026, 12, 7))]
    spans = [(_day(2013, 4, 28), _day(2021, 7, 6)), (_day(2026, 12, 1), NOW)]
    new = plan(QUOTES, existing, spans, NOW)
    years = [(_day(y, 1, 1), _day(y + 1, 1, 1)) for y in range(2013, 2022) if y != 2020]
    # 2020 is cut around the existing March; the recent week holding NOW is added.
    assert sorted(new) == sorted(years + [
        (_day(2020, 1, 1), _day(2020, 3, 1)), (_day(2020, 4, 1), _day(2021, 1, 1)),
        (_day(2026, 12, 7), _day(2026, 12, 14))])
    every = sorted(existing + new)
    assert all(a[1] <= b[0] for a, b in zip(every, every[1:]))
    day = spans[0][0]
    while day <= spans[0][1]:
        assert _covered(every, day), day
        day += timedelta(days=1)
    assert plan(QUOTES, every, spans, NOW) == []


def test_a_bad_timestamp_gets_one_partition_and_a_span_of_them_is_refused() -> None:
    far = _day(2099, 1, 7)
    assert plan(QUOTES, [], [(far, far)], NOW) == [(_day(2099, 1, 5), _day(2099, 1, 12))]
    with pytest.raises(TooManyPartitions, match="check the source's timestamps"):
        plan(QUOTES, [], [(NOW, far)], NOW)


def test_the_tables_have_no_default_partition(engine: Engine) -> None:
    with engine.connect() as conn:
        tables = {name: (default, count) for name, default, count in conn.execute(_PARTITIONED)}
    # The rollups' partitions are made by the folds that write into them (migration 0022).
    assert set(tables) == {table.name for table in (*PARTITIONED_TABLES, *ROLLUP_TABLES)}
    assert all(default == 0 for default, _ in tables.values()), tables
    assert all(tables[table.name][1] > 0 for table in PARTITIONED_TABLES), tables
    now = datetime.now(UTC)
    for table in PARTITIONED_TABLES:
        bounds = partition_bounds(engine, table.name)
        assert _covered(bounds, now) and _covered(bounds, now + table.ahead - timedelta(days=1))


def test_a_csv_history_from_2013_loads_without_manual_steps(
        clean_db: Engine, settings: Settings, csv_dir: Path, restore_partitions: None) -> None:
    # The project's CSV files: Kaggle's and CoinGecko's from 2013, CoinMarketCap's to 2026. No
    # partition older than this week is left: every one they need is made by the loads.
    week = unit(QUOTES, datetime.now(UTC), datetime.now(UTC))[0]
    drop_partitions(clean_db, "quotes", before=week)
    assert min(partition_bounds(clean_db, "quotes"))[0] == week
    run = run_csv(clean_db, settings)
    assert run["status"] == "succeeded", run["error"]
    with clean_db.connect() as conn:
        stored, first = conn.execute(text("SELECT count(*), min(observed_at) FROM quotes")).one()
        tables = {name: (default, count) for name, default, count in conn.execute(_PARTITIONED)}
    assert stored == run["inserted"] > 7000 and first.year == 2013
    assert tables["quotes"][0] == 0
    bounds = partition_bounds(clean_db, "quotes")
    assert (_day(2013, 1, 1), _day(2014, 1, 1)) in bounds
    # 2013-2024 in years, the files' last year in weeks: tens of partitions, not 660 weeks.
    assert len(bounds) < 80, len(bounds)


def test_maintenance_makes_the_partitions_ahead_of_its_time(engine: Engine) -> None:
    later = datetime.now(UTC) + timedelta(days=400)
    try:
        created = maintain(engine, later)
        assert created["quotes"] and created["raw_line_blocks"] and created["raw_item_blocks"]
        for table in PARTITIONED_TABLES:
            bounds = partition_bounds(engine, table.name)
            day = later
            while day <= later + table.ahead:
                assert _covered(bounds, day), (table, day)
                day += timedelta(days=1)
        assert maintain(engine, later) == {table.name: [] for table in PARTITIONED_TABLES}
    finally:
        for table in PARTITIONED_TABLES:
            drop_partitions(engine, table.name, after=later - timedelta(days=32))


# A relation's columns in their physical order, with what a partition must share with its parent.
_LAYOUT = text(
    "SELECT a.attname, t.typlen, a.attnotnull, a.attcompression, a.attstorage "
    "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
    "WHERE a.attrelid = CAST(:r AS regclass) AND a.attnum > 0 AND NOT a.attisdropped "
    "ORDER BY a.attnum")
_CHECKS = text("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
               "WHERE conrelid = CAST(:r AS regclass) AND contype = 'c' ORDER BY 1")


def test_a_new_partition_puts_fixed_width_columns_first_and_keeps_the_parents_rules(
        engine: Engine) -> None:
    later = datetime.now(UTC) + timedelta(days=400)
    try:
        created = maintain(engine, later)
        with engine.connect() as conn:
            for table in PARTITIONED_TABLES:
                parent = {row.attname: row for row in conn.execute(_LAYOUT, {"r": table.name})}
                partition = conn.execute(_LAYOUT, {"r": created[table.name][0]}).all()
                # Same columns, each with its parent's NOT NULL, compression and storage...
                assert {row.attname: row for row in partition} == parent
                # ...fixed-width ones (widest first) before the variable-length ones.
                widths = [row.typlen for row in partition]
                fixed = [w for w in widths if w > 0]
                assert widths[:len(fixed)] == sorted(fixed, reverse=True), (table, widths)
                assert (conn.execute(_CHECKS, {"r": created[table.name][0]}).all()
                        == conn.execute(_CHECKS, {"r": table.name}).all())
            order = [row.attname for row in conn.execute(_LAYOUT, {"r": created["quotes"][0]})]
        assert order[:2] == ["asset_id", "observed_at"] and order.index("rank") < order.index(
            "source"), order
        # Rows written through the parent land in it and read back the same.
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd, "
                "rank, raw_hash) VALUES (1, 'csv', :at, 'x', 1.5, 7, '\\x0102')"), {"at": later})
            row = conn.execute(text(
                "SELECT source, source_asset_id, price_usd::text, rank, raw_hash FROM quotes "
                "WHERE asset_id = 1 AND observed_at = :at"), {"at": later}).one()
        assert (*row[:4], bytes(row[4])) == ("csv", "x", "1.5", 7, b"\x01\x02")
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM quotes WHERE asset_id = 1 AND observed_at = :at"),
                         {"at": later})
        for table in PARTITIONED_TABLES:
            drop_partitions(engine, table.name, after=later - timedelta(days=32))
