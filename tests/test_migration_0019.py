"""Migration 0019: flag documents of batch checks move into their quotes' rows and are served
the same; outliers and what the stored form cannot rebuild stay documents; and back down."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, text

from shared.quality.checks import (
    QualityThresholds,
    implausible_flags,
    jump_flag,
    make_flag,
    stale_flag,
)
from shared.quality.compact import flag_sets, stored_flags
from tests.helpers.migrations import flask_db, scratch_database

# Starts real processes (`flask db` on a scratch database): not in the fast subset.
pytestmark = pytest.mark.processes

UTC = timezone.utc
# Now: the partitions 0018 makes on an empty database start at yesterday.
AT = datetime.now(UTC).replace(microsecond=0)
T = QualityThresholds(jump_factor=5.0, stale_seconds={"coingecko": 600})
OUTLIER = make_flag("outlier", "price is 20% away", deviation_pct=20.0, sources=["a", "b"])
# asset id -> (source, price, market cap, volume, the quote's flags as 0018 stored them)
LEGACY: dict[int, tuple[str, str, str | None, str | None, list[dict[str, Any]]]] = {
    1: ("csv", "250.5", None, None,
        [jump_flag(250.5, AT.isoformat(), (AT - timedelta(days=1)).isoformat(), 2.5, T)]),
    2: ("coingecko", "5.5", "3333370870735.0", "5.4",
        implausible_flags(5.5, 3333370870735.0, 5.4, None, T)
        + [stale_flag("coingecko", AT, AT + timedelta(hours=2), T)]),
    3: ("csv", "30", None, None,
        [jump_flag(30.0, AT.isoformat(), (AT - timedelta(days=2)).isoformat(), 3.0, T),
         OUTLIER]),
    4: ("coinpaprika", "1", None, None, [{"flag": "outlier"}]),
    # Evidence that does not match the quote (its price is 40, not 400): kept as it was.
    5: ("csv", "40", None, None,
        [jump_flag(400.0, AT.isoformat(), (AT - timedelta(days=1)).isoformat(), 4.0, T)]),
}


def _served(engine: Engine) -> dict[int, list[dict[str, Any]]]:
    """Each legacy quote's flags as the readers serve them (stored form, then documents)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(
            "SELECT q.asset_id, q.observed_at, q.flag_set, q.jump_base_price, q.jump_base_us, "
            "q.price_usd, q.market_cap_usd, q.volume_24h_usd, q.circulating_supply, f.flags "
            "FROM quotes q LEFT JOIN quote_flags f USING (asset_id, source, observed_at) "
            "ORDER BY q.asset_id")
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
        sets = flag_sets(cursor, (row["flag_set"] for row in rows))
        return {row["asset_id"]: stored_flags(sets, row, row["flags"]) for row in rows}
    finally:
        raw.close()


def test_0019_moves_batch_flags_into_their_quotes_and_back() -> None:
    with scratch_database() as (url, engine):
        flask_db(url, "upgrade", "0018")
        with engine.begin() as conn:
            for asset_id, (source, price, mcap, volume, flags) in LEGACY.items():
                conn.execute(text(
                    "INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, "
                    "price_usd, market_cap_usd, volume_24h_usd, run_id) "
                    "VALUES (:a, :s, :t, 'x', :p, :m, :v, 7)"),
                    {"a": asset_id, "s": source, "t": AT, "p": price, "m": mcap, "v": volume})
                conn.execute(text(
                    "INSERT INTO quote_flags (asset_id, source, observed_at, flags) "
                    "VALUES (:a, :s, :t, CAST(:f AS jsonb))"),
                    {"a": asset_id, "s": source, "t": AT, "f": json.dumps(flags)})
        # As JSON gives them back (tuples as lists).
        legacy = {a: json.loads(json.dumps(flags)) for a, (*_, flags) in LEGACY.items()}
        flask_db(url, "upgrade")
        assert _served(engine) == legacy
        with engine.connect() as conn:
            documents = dict(conn.execute(text(
                "SELECT asset_id, flags FROM quote_flags ORDER BY asset_id")).all())
            stored = conn.execute(text(
                "SELECT q.asset_id, s.kinds, s.quotes, s.run_id FROM quotes q "
                "JOIN flag_sets s ON s.id = q.flag_set ORDER BY q.asset_id")).all()
        assert documents == {3: [OUTLIER], 4: [{"flag": "outlier"}], 5: legacy[5]}
        assert [tuple(r) for r in stored] == [(1, 4, 2, 7), (2, 3, 1, 7), (3, 4, 2, 7)]
        flask_db(url, "downgrade", "0018")
        with engine.connect() as conn:
            back = dict(conn.execute(text(
                "SELECT asset_id, flags FROM quote_flags ORDER BY asset_id")).all())
        assert back == legacy
