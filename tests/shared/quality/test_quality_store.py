"""Quality storage on real PostgreSQL: previous prices from current_quotes, flags kept sparse."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import Engine, text

from shared.batch.types import Batch, ParsedQuote
from shared.quality.checks import QualityThresholds, make_flag
from shared.quality.flags import batch_flags, store_flags

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
    later = AT + timedelta(days=1)
    # Only bitcoin has a priced previous quote: ethereum's (no price) and dogecoin's (none)
    # cannot make a jump.
    batch = Batch("k", {}, quotes=[
        ParsedQuote(slug, slug, slug, later, b"h", price_usd=Decimal(price))
        for slug, price in (("bitcoin", "9611408"), ("ethereum", "2600"), ("dogecoin", "1"))])
    raw = clean_db.raw_connection()
    try:
        cur = raw.cursor()
        found = batch_flags(cur, "csv", batch, {"bitcoin": 1, "ethereum": 2, "dogecoin": 3},
                            QualityThresholds()).flags
        assert [(a, t, [f["flag"] for f in flags]) for a, t, flags in found] == [
            (1, later, ["jump"])]
        rows = [found[0], (2, later, [make_flag("stale", "old")])]
        assert store_flags(cur, "csv", rows) == 2
        # The same flags again change nothing; new flags replace the old.
        assert store_flags(cur, "csv", rows) == 0
        assert store_flags(cur, "csv", [(2, later, [make_flag("jump", "x")])]) == 1
        cur.execute("SELECT asset_id, observed_at, flags FROM quote_flags "
                    "WHERE source = 'csv' AND asset_id = ANY(%s)", ([1, 2],))
        stored = {(int(a), at): list(flags) for a, at, flags in cur.fetchall()}
        assert [f["flag"] for f in stored[(1, later)]] == ["jump"]
        assert stored[(1, later)][0]["evidence"]["previous_price_usd"] == 96114.08
        assert stored[(2, later)][0]["reason"] == "x"
        assert store_flags(cur, "csv", []) == 0
        raw.commit()
    finally:
        raw.close()
    with clean_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM quote_flags")).scalar_one() == 2
