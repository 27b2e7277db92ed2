"""Closed quote partitions' keys packed (shared.storage.compaction), on the real server."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from shared.storage.compaction import PACKED_COMMENT, compact, due
from shared.storage.partitions import KNOWN, QUOTES, existing_partitions, unit
from tests.helpers.partitions import ensure_quote_partitions

UTC = timezone.utc
NOW = datetime.now(UTC)
# A week 60 days back: closed, and no other test writes there.
WEEK = unit(QUOTES, NOW - timedelta(days=60), NOW)
COINS, TICKS = 200, 300
# The week's rows, in a checksum that any lost or changed row would move.
_SUM = text("SELECT count(*), md5(string_agg(asset_id || source || observed_at::text || "
            "price_usd::text, ',' ORDER BY asset_id, source, observed_at)) FROM quotes "
            "WHERE observed_at >= :low AND observed_at < :high")


def _partition(engine: Engine) -> tuple[str, str]:
    with engine.connect() as conn:
        name = next(n for n, b in existing_partitions(conn, QUOTES.name).items() if b == WEEK)
        index = conn.execute(text(
            "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = CAST(:t AS regclass) AND x.indisprimary"), {"t": name}
        ).scalar_one()
    return name, index


@pytest.fixture()
def week(clean_db: Engine) -> tuple[str, str]:
    """A closed week of quotes written tick by tick (each coin's row in the middle of the
    key, as the schedule writes them): its partition and key index."""
    ensure_quote_partitions(clean_db, WEEK[0])
    name, index = _partition(clean_db)
    with clean_db.begin() as conn:
        # As made: an earlier test may have packed it (clean_db empties, keeps partitions).
        conn.execute(text(f'COMMENT ON INDEX "{index}" IS NULL'))
        for tick in range(TICKS):
            conn.execute(text(
                "INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd) "
                "SELECT a, 'coingecko', :at, 'c' || a, a + :tick FROM generate_series(1, :n) a"),
                {"at": WEEK[0] + timedelta(minutes=5 * tick), "tick": tick, "n": COINS})
    return name, index


def _size(engine: Engine, relation: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_relation_size(CAST(:r AS regclass))"),
                                {"r": relation}).scalar_one())


def test_a_closed_weeks_key_is_rebuilt_packed_once_keeping_every_row(
        clean_db: Engine, week: tuple[str, str]) -> None:
    name, index = week
    bounds = {"low": WEEK[0], "high": WEEK[1]}
    with clean_db.connect() as conn:
        before = conn.execute(_SUM, bounds).one()
        assert (name, index) in due(conn, NOW)
        # The week that is still being written is not due.
        current = unit(QUOTES, NOW, NOW)
        ensure_quote_partitions(clean_db, NOW)
        open_names = [n for n, b in existing_partitions(conn, QUOTES.name).items()
                      if b == current]
        assert open_names and all(n not in dict(due(conn, NOW)) for n in open_names)
    loose = _size(clean_db, index)
    assert name in compact(clean_db, NOW, limit=100)
    packed = _size(clean_db, index)
    # One row per coin and tick at the end of each coin's range: half-full pages before
    # (~83 B a row against ~50 B packed, 10% of each leaf left free).
    assert packed < 0.7 * loose, (loose, packed)
    with clean_db.connect() as conn:
        assert conn.execute(_SUM, bounds).one() == before
        assert (name, index) not in due(conn, NOW)
        # Still the partition of the parent's key: it rejects a duplicate.
        assert conn.execute(text(
            "SELECT count(*) FROM pg_inherits WHERE inhrelid = CAST(:i AS regclass) "
            "AND inhparent = 'pk_quotes'::regclass"), {"i": index}).scalar_one() == 1
    with pytest.raises(IntegrityError), clean_db.begin() as conn:
        conn.execute(text("INSERT INTO quotes (asset_id, source, observed_at, source_asset_id) "
                          "VALUES (1, 'coingecko', :at, 'c1')"), {"at": WEEK[0]})
    assert name not in compact(clean_db, NOW, limit=100)  # done once


def test_a_rebuild_cut_off_leaves_nothing_the_next_run_does_not_clean_up(
        clean_db: Engine, week: tuple[str, str]) -> None:
    """A rebuild whose server connection ended part way (a server restart, an operator's
    pg_terminate_backend) leaves its copy of the key, invalid, under the `_ccnew` name
    REINDEX CONCURRENTLY gives it: the next run drops it and rebuilds the key."""
    name, index = week
    # The same leftover, made deterministically: a concurrent build that fails part way
    # (a unique key on a column with repeats) leaves its index behind, invalid.
    with pytest.raises(IntegrityError), clean_db.connect().execution_options(
            isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE UNIQUE INDEX CONCURRENTLY "{index}_ccnew" '
                          f'ON "{name}" (source)'))
    invalid = text("SELECT count(*) FROM pg_index x WHERE x.indrelid = CAST(:t AS regclass) "
                   "AND NOT x.indisvalid")
    with clean_db.connect() as conn:
        assert conn.execute(invalid, {"t": name}).scalar_one() == 1
        assert (name, index) in due(conn, NOW)
    KNOWN.forget()
    assert name in compact(clean_db, NOW, limit=100)
    with clean_db.connect() as conn:
        assert conn.execute(invalid, {"t": name}).scalar_one() == 0
        indexes = conn.execute(text(
            "SELECT count(*) FROM pg_index x WHERE x.indrelid = CAST(:t AS regclass)"),
            {"t": name}).scalar_one()
        assert indexes == 1
        assert conn.execute(text("SELECT obj_description(CAST(:i AS regclass), 'pg_class')"),
                            {"i": index}).scalar_one() == PACKED_COMMENT
