"""Quality storage on real PostgreSQL: previous prices in one query, flags kept sparse."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, text

from shared.quality.checks import QualityThresholds, check_columns, make_flag
from shared.quality.store import flags_of, previous_prices, store_flags

AT = datetime(2025, 2, 9, 17, 44, tzinfo=timezone.utc)


def test_previous_prices_feed_the_jump_check_and_flags_are_stored_once(clean_db: Engine) -> None:
    with clean_db.begin() as conn:
        for asset_id, slug, price in ((1, "bitcoin", "96114.08"), (2, "ethereum", None)):
            conn.execute(text("INSERT INTO assets (id, slug, symbol, name) "
                              "VALUES (:i, :s, :s, :s)"), {"i": asset_id, "s": slug})
            conn.execute(text(
                "INSERT INTO current_quotes (asset_id, source, symbol, name, source_asset_id, "
                "observed_at, price_usd) VALUES (:i, 'csv', :s, :s, :s, :t, :p)"),
                {"i": asset_id, "s": slug, "t": AT, "p": price})
    raw = clean_db.raw_connection()
    try:
        cur = raw.cursor()
        previous = previous_prices(cur, "csv", [1, 2, 3])
        assert previous == {1: (AT, 96114.08)}
        later = AT + timedelta(days=1)
        result = check_columns("csv", [1, 2], [later, later], [9611408.0, 2600.0],
                               QualityThresholds(), previous=previous)
        assert list(result) == [0]
        rows = [(1, later, result[0]), (2, later, [make_flag("stale", "old")])]
        assert store_flags(cur, "csv", rows) == 2
        # The same flags again change nothing; new flags replace the old.
        assert store_flags(cur, "csv", rows) == 0
        assert store_flags(cur, "csv", [(2, later, [make_flag("jump", "x")])]) == 1
        stored = flags_of(cur, "csv", [1, 2])
        assert [f["flag"] for f in stored[(1, later)]] == ["jump"]
        assert stored[(1, later)][0]["evidence"]["previous_price_usd"] == 96114.08
        assert stored[(2, later)][0]["reason"] == "x"
        assert store_flags(cur, "csv", []) == 0 and previous_prices(cur, "csv", []) == {}
        raw.commit()
    finally:
        raw.close()
    with clean_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM quote_flags")).scalar_one() == 2
