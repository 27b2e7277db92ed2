"""Migration 0016 gives the anomalies stored before it their asset, indexes it, and goes back."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.helpers.migrations import flask_db, scratch_database

# Starts real processes (`flask db` on a scratch database): not in the fast subset.
pytestmark = pytest.mark.processes

_ROWS = [("implausible", "coingecko", "quote:9:2022-02-23T11:23:11.426000+00:00", 9),
         ("inserted_low", "coingecko", "run:4", None),
         ("drift", "csv", "drift:2", None),
         ("stale", "csv", "quote:not-a-number:2022-01-01", None)]
_INDEX = "SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_anomalies_asset'"
_COLUMN = ("SELECT count(*) FROM information_schema.columns "
           "WHERE table_name = 'anomalies' AND column_name = 'asset_id'")


def test_0016_derives_the_asset_of_old_and_new_anomalies_and_goes_down() -> None:
    insert = text("INSERT INTO anomalies (kind, source, key, evidence) "
                  "VALUES (:kind, :source, :key, '{}')")
    with scratch_database() as (url, engine):
        flask_db(url, "upgrade", "0015")
        with engine.begin() as conn:
            for kind, source, key, _ in _ROWS[:2]:
                conn.execute(insert, {"kind": kind, "source": source, "key": key})
        flask_db(url, "upgrade", "0016")
        with engine.begin() as conn:
            for kind, source, key, _ in _ROWS[2:]:
                conn.execute(insert, {"kind": kind, "source": source, "key": key})
            stored = conn.execute(text(
                "SELECT kind, source, key, asset_id FROM anomalies ORDER BY id")).all()
            assert [tuple(row) for row in stored] == _ROWS
            assert conn.execute(text(_INDEX)).scalar() == 1
        flask_db(url, "downgrade", "0015")
        with engine.connect() as conn:
            assert conn.execute(text(_COLUMN)).scalar() == 0
            assert conn.execute(text(_INDEX)).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM anomalies")).scalar() == 4
        flask_db(url, "upgrade", "head")
        with engine.connect() as conn:
            assert conn.execute(text(
                "SELECT asset_id FROM anomalies WHERE kind = 'implausible'")).scalar() == 9
