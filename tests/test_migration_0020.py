"""Migration 0020: raw_line_blocks' payload and hashes use lz4, on the table, its partitions and
the partitions made later; back down to the server's default."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import Engine, text

from shared.storage.partitions import RAW_LINE_BLOCKS, create_missing
from tests.helpers.migrations import flask_db, scratch_database

# Starts real processes (`flask db` on a scratch database): not in the fast subset.
pytestmark = pytest.mark.processes

_COMPRESSION = """
SELECT c.relname, a.attname, a.attcompression FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
WHERE c.relname LIKE 'raw_line_blocks%' AND c.relkind IN ('r', 'p')
  AND a.attname IN ('payload', 'line_hashes')
"""


def _methods(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {row.attcompression for row in conn.execute(text(_COMPRESSION))}


def test_0020_compresses_raw_blocks_with_lz4_on_every_partition() -> None:
    with scratch_database() as (url, engine):
        flask_db(url, "upgrade")
        assert _methods(engine) == {"l"}
        with engine.begin() as conn:
            made = create_missing(conn, RAW_LINE_BLOCKS, [(
                datetime(2019, 3, 1, tzinfo=timezone.utc),
                datetime(2019, 3, 2, tzinfo=timezone.utc))])
        assert made and _methods(engine) == {"l"}
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO raw_line_blocks (source, file_key, line_numbers, payload, "
                "line_hashes, run_id, fetched_at) VALUES ('csv', 'f.csv', ARRAY[2], "
                "repeat('a,b,c,1.5', 20000), sha256('x'), 1, '2019-03-01T12:00:00Z')"))
            assert conn.execute(text(
                "SELECT pg_column_compression(payload) FROM raw_line_blocks")).scalar() == "lz4"
        flask_db(url, "downgrade", "0019")
        assert _methods(engine) == {""}
