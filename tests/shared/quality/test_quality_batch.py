"""The write path's quality step on a real database: page clock, outliers set and cleared."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from shared.quality.checks import QualityThresholds
from shared.quality.flags import batch_flags
from shared.quality.outliers import apply_outliers
from shared.batch.types import Batch, ParsedQuote

T0 = datetime(2025, 2, 9, 17, 44, tzinfo=timezone.utc)


def _quote(coin: str, at: datetime, price: str = "1") -> ParsedQuote:
    return ParsedQuote(coin, coin.upper(), coin, at, b"h", price_usd=Decimal(price))


def test_a_future_dated_coin_does_not_make_its_page_stale(clean_db: Engine) -> None:
    quotes = [_quote(f"c{n}", T0 - timedelta(seconds=n)) for n in range(5)]
    quotes.append(_quote("future", datetime(2030, 1, 1, tzinfo=timezone.utc)))
    quotes.append(_quote("behind", T0 - timedelta(hours=2)))
    batch = Batch("page:1", {}, quotes=quotes)
    assets = {q.source_asset_id: n for n, q in enumerate(quotes, 1)}
    with Session(clean_db) as session:
        cursor = session.connection().connection.cursor()
        found = batch_flags(cursor, "coingecko", batch, assets, QualityThresholds()).flags
    assert [(a, [f["flag"] for f in flags]) for a, _, flags in found] == [
        (assets["behind"], ["stale"])]


def _current(conn: Any, source: str, price: str) -> None:
    conn.execute(text(
        "INSERT INTO current_quotes (asset_id, source, symbol, name, source_asset_id, "
        "observed_at, price_usd) VALUES (1, :s, 'BTC', 'Bitcoin', 'bitcoin', :t, :p) "
        "ON CONFLICT (asset_id, source) DO UPDATE SET price_usd = excluded.price_usd"),
        {"s": source, "t": T0, "p": price})


def _outliers(engine: Engine) -> int:
    with Session(engine) as session, session.begin():
        cursor = session.connection().connection.cursor()
        return apply_outliers(session, cursor, [1], QualityThresholds())


def test_an_outlier_is_flagged_stored_reported_and_cleared_once_sources_agree(
        clean_db: Engine) -> None:
    with clean_db.begin() as conn:
        conn.execute(text(
            "INSERT INTO assets (id, slug, symbol, name) VALUES (1, 'bitcoin', 'BTC', 'Bitcoin')"))
        for source, price in (("coingecko", "100"), ("coinpaprika", "101"), ("csv", "120")):
            _current(conn, source, price)
    assert _outliers(clean_db) == 1
    assert _outliers(clean_db) == 0  # nothing changed: nothing written

    def state() -> tuple[Any, ...]:
        with clean_db.connect() as conn:
            quality = conn.execute(text(
                "SELECT source, quality FROM current_quotes ORDER BY source")).all()
            stored = conn.execute(text("SELECT source FROM quote_flags")).scalars().all()
            kinds = conn.execute(text("SELECT kind, source FROM anomalies")).all()
        return quality, stored, kinds

    quality, stored, kinds = state()
    assert [q.source for q in quality if q.quality] == ["csv"]
    flag = quality[2].quality["flags"][0]
    assert flag["flag"] == "outlier" and flag["evidence"]["deviation_pct"] > 18
    assert stored == ["csv"] and [tuple(k) for k in kinds] == [("outlier", "csv")]
    with clean_db.begin() as conn:
        _current(conn, "csv", "100.5")
    assert _outliers(clean_db) == 1
    quality, stored, kinds = state()
    assert all(q.quality is None for q in quality) and stored == []
    assert len(kinds) == 1  # the anomaly stays on record
