"""Migration 0021 on a populated database: raw_records' API items moved into raw_item_blocks in
chunks (every item kept exactly, one written mid-migration too), served by GET /raw's queries
under new ids (old ids not found), and back down."""
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from shared.errors import NotFound
from shared.models import RAW_LINE_ID_BITS
from shared.queries.raw import get_raw_record, list_raw_records
from shared.storage.partitions import existing_partitions
from tests.helpers.migrations import flask_db, scratch_database, upgrade_with_a_late_write
from tests.helpers.raw_items import stored_items

# Starts real processes (`flask db` on a scratch database): not in the fast subset.
pytestmark = pytest.mark.processes

# 24 pages of 250 items of two sources, one fetch time per page, every 3 days back from now
# (eleven or twelve weekly partitions); item texts carry a tab and a newline now and then.
_RECORDS = """
INSERT INTO raw_records (source, source_key, content_hash, payload, run_id, fetched_at)
SELECT CASE WHEN p % 2 = 0 THEN 'coingecko' ELSE 'coinpaprika' END, 'coin-' || i,
       sha256(convert_to(p || ':' || i, 'UTF8')),
       '{"id": "coin-' || i || '", "page": ' || p || ', "price": ' || (i * 1.25 + p)
           || CASE WHEN i % 50 = 0 THEN E', "note": "a\\tb\\nc"' ELSE '' END || '}',
       100 + p / 4, now() - p * interval '3 days'
FROM generate_series(0, 23) p, generate_series(1, 250) i
ORDER BY p, i
"""
_RECORDS_NOW = ("SELECT source, source_key, payload, run_id, content_hash, fetched_at "
                "FROM raw_records")
_LATE = ("INSERT INTO raw_records (source, source_key, content_hash, payload, run_id) "
         "VALUES ('coingecko', 'late', sha256('late'), '{\"id\": \"late\"}', 999)")


def _records(conn: Connection) -> list[tuple[Any, ...]]:
    """raw_records' rows as (source, key, text, run, hash, fetched_at)."""
    return [(r.source, r.source_key, r.payload, r.run_id, bytes(r.content_hash), r.fetched_at)
            for r in conn.execute(text(_RECORDS_NOW))]


def _upgrade_with_a_write_in_the_middle(url: str, engine: Engine) -> str:
    """flask db upgrade 0021 in chunks of 700 ids; an item inserted into raw_records once the
    blocks' table exists and committed only when the last step waits for it. The output."""
    return upgrade_with_a_late_write(
        url, engine, ["-x", "chunk_rows=700", "0021"],
        "SELECT to_regclass('raw_item_blocks')", _LATE, "raw_records")


def test_0021_moves_api_items_into_blocks_keeping_every_item_and_goes_down() -> None:
    with scratch_database() as (url, engine):
        flask_db(url, "upgrade", "0020")
        with engine.begin() as conn:
            conn.execute(text(_RECORDS))
            conn.execute(text(
                "INSERT INTO raw_line_blocks (source, file_key, line_numbers, payload, "
                "line_hashes, run_id) VALUES ('csv', 'f.csv', ARRAY[2], 'a,b', sha256('x'), 1)"))
            old_ids = conn.execute(text(
                "SELECT id FROM raw_records ORDER BY id")).scalars().all()
            before = _records(conn)
        assert len(before) == 6000

        out = _upgrade_with_a_write_in_the_middle(url, engine)
        assert out.count("raw_records: ") > 8 and "raw_records: 100% (" in out

        with engine.connect() as conn:
            stored = stored_items(conn)
            after = [(i.source, i.source_key, i.payload, i.run_id, i.content_hash, i.fetched_at)
                     for i in stored]
            assert conn.execute(text("SELECT to_regclass('raw_records')")).scalar() is None
            blocks = conn.execute(text("SELECT count(*) FROM raw_item_blocks")).scalar_one()
            packed = conn.execute(text(
                "SELECT sum(octet_length(payload)) FROM raw_item_blocks")).scalar_one()
            new_ids = conn.execute(text("SELECT id FROM raw_items ORDER BY id")).scalars().all()
            line_block = conn.execute(text("SELECT id FROM raw_line_blocks")).scalar_one()
        late = [item for item in stored if item.source_key == "late"]
        assert len(late) == 1 and late[0].run_id == 999
        assert sorted(row for row in after if row[1] != "late") == sorted(before)
        assert new_ids == [item.id for item in stored]
        # One block per page (a page cut by a chunk's edge makes two), each with its fetch
        # time; the texts compressed (to well under their length).
        assert 24 < blocks <= 24 + 6000 // 700 + 2
        assert packed < sum(len(row[2]) for row in before) / 2
        with engine.begin() as conn:
            weeks = existing_partitions(conn, "raw_item_blocks")
        assert 10 <= len(weeks) <= 14

        # Ids: block id * 2^20 + index, every one above every old id and apart from the CSV
        # lines' (one sequence); an old id is not found, a new one is the same item.
        assert min(new_ids) > max(old_ids)
        assert line_block not in {i >> RAW_LINE_ID_BITS for i in new_ids}
        with Session(engine) as session:
            with pytest.raises(NotFound):
                get_raw_record(session, "coingecko", old_ids[-1])
            # A run's items (the total without a run is the writers' count, migration 0023).
            page = list_raw_records(session, "coingecko", run_id=100, limit=100)
            assert page.total == 500
            seen = list(page.rows)
            while page.next_cursor is not None:
                page = list_raw_records(session, "coingecko", run_id=100, limit=100,
                                        cursor=page.next_cursor)
                seen.extend(page.rows)
            assert [r.id for r in seen] == sorted({r.id for r in seen}, reverse=True)
            assert len(seen) == 500
            one = get_raw_record(session, "coingecko", seen[123].id)
            assert one == seen[123]
            same = next(item for item in stored if item.id == one.id)
            assert (one.payload, one.content_hash, one.source_key, one.fetched_at) == (
                same.payload, same.content_hash, same.source_key, same.fetched_at)
            by_run = list_raw_records(session, "coinpaprika", run_id=101, limit=1000)
            assert by_run.total == len(by_run.rows) == 500

        # Back down: one row per item again, the same items.
        flask_db(url, "downgrade", "0020")
        with engine.connect() as conn:
            back = _records(conn)
        assert sorted(back) == sorted(after)
