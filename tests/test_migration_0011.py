"""Migration 0011 (quality tables) goes down to 0010 and back up cleanly."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.helpers.migrations import flask_db, scratch_database

# Starts real processes (`flask db` on a scratch database): not in the fast subset.
pytestmark = pytest.mark.processes

_TABLES = ("SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables"
           " WHERE table_name IN ('quote_flags', 'anomalies')")
_COLUMN = ("SELECT count(*) FROM information_schema.columns "
           "WHERE table_name = 'current_quotes' AND column_name = 'quality'")


def test_0011_down_and_up() -> None:
    with scratch_database() as (url, engine):
        flask_db(url, "upgrade", "0011")
        with engine.begin() as conn:
            assert conn.execute(text(_TABLES)).scalar() == "anomalies,quote_flags"
            assert conn.execute(text(_COLUMN)).scalar() == 1
            conn.execute(text("INSERT INTO anomalies (kind, source, key, evidence) "
                              "VALUES ('drift', 'csv', 'drift:1', '{}')"))
            conflict = conn.execute(text(
                "INSERT INTO anomalies (kind, source, key, evidence) VALUES "
                "('drift', 'csv', 'drift:1', '{}') ON CONFLICT DO NOTHING RETURNING id")).all()
            assert conflict == []
        flask_db(url, "downgrade", "0010")
        with engine.connect() as conn:
            assert conn.execute(text(_TABLES)).scalar() is None
            assert conn.execute(text(_COLUMN)).scalar() == 0
        flask_db(url, "upgrade", "0011")
