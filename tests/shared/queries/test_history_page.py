"""An asset's history pages and price chart read only what they show, however long the history."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from shared.queries.assets import asset_history
from shared.queries.price_chart import MAX_POINTS, price_chart
from shared.storage.partitions import QUOTES, ensure
from tests.helpers.plans import rows_read, statements_sent

UTC = timezone.utc
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
# Two years of one coin at three sources, 700 rows each: a day apart at two of them (each at
# its own minute), every 12 hours at the third (ties with one of them).
_ROWS = 700


def _load(engine: Engine) -> list[tuple[datetime, str]]:
    first = NOW - timedelta(days=_ROWS)
    ensure(engine, QUOTES, [(first, NOW)])
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO assets (id, slug, symbol, name) "
                          "VALUES (1, 'testcoin', 'TST', 'Testcoin')"))
        conn.execute(text(
            "INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd) "
            "SELECT 1, s.source, :now - n * s.step - s.shift, s.source, n "
            "FROM (VALUES ('coingecko', interval '1 day', interval '0'), "
            "             ('coinpaprika', interval '1 day', interval '7 minutes'), "
            "             ('csv', interval '12 hours', interval '0')) s(source, step, shift), "
            "     generate_series(0, :rows - 1) n"), {"now": NOW, "rows": _ROWS})
        conn.execute(text("ANALYZE quotes"))
        keys = conn.execute(text("SELECT observed_at, source FROM quotes WHERE asset_id = 1 "
                                 "ORDER BY observed_at DESC, source DESC")).all()
    return [(at, source) for at, source in keys]


def test_pages_without_a_source_follow_the_order_and_read_only_what_they_show(
        clean_db: Engine) -> None:
    everything = _load(clean_db)
    with statements_sent(clean_db) as sent, Session(clean_db) as session:
        first = asset_history(session, "1", limit=50)
        later = asset_history(session, "1", limit=50, cursor=first.next_cursor)
        deep = asset_history(session, "1", limit=50, offset=1000)
    keys = [[(q.observed_at, q.source) for q in page.rows] for page in (first, later, deep)]
    assert keys == [everything[:50], everything[50:100], everything[1000:1050]]
    pages = [s for s in sent if "FROM quotes" in s and "ORDER BY" in s and "UNION ALL" in s]
    assert len(pages) == 3, sent
    with clean_db.connect() as conn:
        scanned = [rows_read(conn, page) for page in pages]
    # Each source's branch stops at offset + limit + 1 rows: 3 x 51 of the 2,100 rows, and
    # 3 x 1,051 for the page at offset 1,000 (the cursor's page reads from its position).
    assert scanned[0] <= 3 * 51 and scanned[1] <= 3 * 51 and scanned[2] <= 3 * 1051, scanned
    assert len(everything) == 3 * _ROWS


def test_the_price_chart_probes_each_bucket_instead_of_reading_the_history(
        clean_db: Engine) -> None:
    everything = _load(clean_db)
    with statements_sent(clean_db) as sent, Session(clean_db) as session:
        chart = price_chart(session, 1, None, NOW)
    # The same points as reading every quote and keeping each source's last per bucket.
    with clean_db.connect() as conn:
        prices = dict(((at, source), float(price)) for at, source, price in conn.execute(text(
            "SELECT observed_at, source, price_usd FROM quotes WHERE asset_id = 1")))
    lo, hi = everything[-1][0].timestamp(), NOW.timestamp()
    width = (hi + 1 - lo) / MAX_POINTS
    last: dict[tuple[str, int], tuple[float, float]] = {}
    for at, source in sorted(everything):
        last[(source, int((at.timestamp() - lo) // width))] = (at.timestamp(), prices[at, source])
    expected: dict[str, list[tuple[float, float]]] = {}
    for (source, _), point in sorted(last.items(), key=lambda kv: kv[1]):
        expected.setdefault(source, []).append(point)
    assert chart.since == everything[-1][0] and chart.points == expected
    assert all(len(points) <= MAX_POINTS for points in chart.points.values())
    probes = [s for s in sent if "LATERAL" in s]
    assert len(probes) == 2, sent  # the first quote's, then the buckets'
    with clean_db.connect() as conn:
        # About one row per source and bucket (and per source for the first quote), of the
        # 2,100 rows: the cost stays put as the history grows. EXPLAIN gives a repeated
        # scan's rows as a rounded mean per loop, hence the few rows of slack.
        assert rows_read(conn, probes[0]) <= 2 * 3
        assert rows_read(conn, probes[1]) <= 3 * MAX_POINTS + 10
