"""Migration 0018 on a populated database: quotes and raw_line_blocks partitioned with every row
kept (count and checksum), a row written mid-migration kept, reads working, and back down."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from shared.ingest.publish import publish_assets
from shared.queries.as_of import quotes_as_of
from shared.queries.raw import get_raw_record
from shared.storage.partitions import existing_partitions
from tests.helpers.migrations import flask_db, scratch_database, upgrade_with_a_late_write

# Starts real processes (`flask db` on a scratch database): not in the fast subset.
pytestmark = pytest.mark.processes

UTC = timezone.utc
# 60 coins a day from 2013-04-28 (csv), 60 coins an hour over the last two weeks (coingecko).
_QUOTES = """
INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd, market_cap_usd,
                    volume_24h_usd, rank, raw_hash, run_id)
SELECT a, 'csv', d + interval '23:59:59', 'coin-' || a, a * 10 + extract(doy FROM d) / 7.0,
       a * 1e9, a * 1e6, a, sha256(convert_to(a || d::text, 'UTF8')), 1
FROM generate_series(1, 60) a, generate_series('2013-04-28'::timestamptz, '2026-11-30', '1 day') d
UNION ALL
SELECT a, 'coingecko', h, 'gecko-' || a, a * 3.25 + extract(hour FROM h), NULL, NULL, a, NULL, 2
FROM generate_series(1, 60) a,
     generate_series(date_trunc('hour', now()) - interval '14 days', date_trunc('hour', now()),
                     '1 hour') h
"""
_BLOCKS = """
INSERT INTO raw_line_blocks (source, file_key, line_numbers, payload, line_hashes, run_id,
                             fetched_at)
SELECT 'csv', 'f' || b || '.csv', ARRAY[2, 3], 'line a ' || b || E'\\nline b ' || b,
       sha256(convert_to('a' || b, 'UTF8')) || sha256(convert_to('b' || b, 'UTF8')), 1,
       now() - b * interval '3 days'
FROM generate_series(1, 200) b
"""
# Over the columns quotes has at 0017 (a later migration may add some).
_QUOTE_COLUMNS = ("asset_id, source, observed_at, source_asset_id, price_usd, market_cap_usd, "
                  "volume_24h_usd, circulating_supply, total_supply, max_supply, rank, "
                  "open_usd, high_usd, low_usd, close_usd, raw_hash, run_id, inserted_at")
_CHECKSUMS = {
    "quotes": f"SELECT count(*), md5(string_agg(ROW({_QUOTE_COLUMNS})::text, ',' "
              "ORDER BY asset_id, source, observed_at)) FROM quotes t",
    "raw_line_blocks": "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) "
                       "FROM raw_line_blocks t",
    "raw_lines": "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM raw_lines t",
}
_KINDS = ("SELECT relname, relkind FROM pg_class WHERE relname IN ('quotes', 'raw_line_blocks') "
          "ORDER BY 1")
# A quote no generated row has: written by an "old worker" while the rows are being copied.
_LATE_QUOTE = ("INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd) "
               "VALUES (999, 'coinpaprika', date_trunc('minute', now()), 'late', 1.5)")


def _checksums(engine: Engine) -> dict[str, tuple[int, str]]:
    with engine.connect() as conn:
        return {name: tuple(conn.execute(text(sql)).one()) for name, sql in _CHECKSUMS.items()}


def _still_the_old_table(writer: Connection) -> None:
    assert writer.execute(text("SELECT relkind FROM pg_class WHERE relname = 'quotes'")
                          ).scalar_one() == "r"


def _upgrade_with_a_write_in_the_middle(url: str, engine: Engine) -> str:
    """flask db upgrade in small chunks; a quote inserted into the old table once the mirror
    is in place and committed only when the swap waits for it. The upgrade's output."""
    return upgrade_with_a_late_write(
        url, engine, ["-x", "chunk_pages=64", "0018"],
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'quotes_mirror'", _LATE_QUOTE,
        "quotes", check=_still_the_old_table)


def test_0018_partitions_a_populated_database_keeping_every_row_and_goes_down() -> None:
    with scratch_database() as (url, engine):
        flask_db(url, "upgrade", "0017")
        with engine.begin() as conn:
            conn.execute(text(_QUOTES))
            conn.execute(text(_BLOCKS))
            conn.execute(text("INSERT INTO assets (id, slug, symbol, name) "
                              "SELECT a, 'coin-' || a, 'C' || a, 'Coin ' || a "
                              "FROM generate_series(1, 60) a"))
        before = _checksums(engine)
        assert before["quotes"][0] > 290_000 and before["raw_lines"][0] == 400

        out = _upgrade_with_a_write_in_the_middle(url, engine)
        # Progress was logged chunk by chunk.
        assert out.count("quotes: ") > 10 and "quotes: 100% (" in out

        with engine.connect() as conn:
            assert conn.execute(text(_KINDS)).all() == [("quotes", "p"), ("raw_line_blocks", "p")]
            assert conn.execute(text(
                "SELECT count(*) FROM pg_partitioned_table WHERE partdefid <> 0")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM pg_tables WHERE tablename LIKE "
                                     "'%\\_new' OR tablename LIKE '%\\_old'")).scalar() == 0
            late = conn.execute(text("SELECT count(*) FROM quotes WHERE asset_id = 999")).scalar()
        with engine.begin() as conn:
            spans = [high - low for low, high in existing_partitions(conn, "quotes").values()]
        assert late == 1
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM quotes WHERE asset_id = 999"))
        after = _checksums(engine)
        assert after == before
        # History in years (2013-2024, and 2025 up to where the last year's weeks start),
        # the last year and the next weeks in weeks.
        assert sum(span > timedelta(days=7) for span in spans) == 13
        assert sum(span == timedelta(days=7) for span in spans) in range(52, 60), len(spans)

        # Back down: plain tables again, the same rows, the raw blocks' ids from the same
        # sequence.
        flask_db(url, "downgrade", "0017")
        with engine.connect() as conn:
            assert conn.execute(text(_KINDS)).all() == [("quotes", "r"), ("raw_line_blocks", "r")]
            last_id = conn.execute(text("SELECT last_value FROM raw_line_blocks_id_seq")).scalar()
        assert _checksums(engine) == before and last_id == 200

        # Up again, to the head (the code reads the newest schema): reads and the write path's
        # statements work on the partitioned tables.
        flask_db(url, "upgrade")
        assert _checksums(engine) == before
        with Session(engine) as session:
            at = datetime(2019, 6, 1, tzinfo=UTC)
            found = quotes_as_of(session, 7, at)
            assert [(q["source"], q["observed_at"]) for q in found] == [
                ("csv", "2019-05-31T23:59:59+00:00")]
            line = get_raw_record(session, "csv", (5 << 20) + 1)
            assert (line.payload, line.source_key) == ("line b 5", "f5.csv:3")
            cursor = session.connection().connection.cursor()
            assert publish_assets(cursor, "coingecko", range(1, 61)) == 60
            session.commit()
