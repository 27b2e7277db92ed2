"""GET /data's one-statement page (SQL text per filter shape) against the general page query."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from shared.queries.data import DATA_SORT_FIELDS, DataFilters, page_rows
from shared.queries.data_read import _page_alone, page_shape, page_text

_FLAG = json.dumps({"flags": [{"flag": "jump", "reason": "r", "evidence": {}}]})
FILTERS = [
    DataFilters(), DataFilters(source="csv"), DataFilters(symbols=("s1",)),
    DataFilters(symbols=("S1", " s2 ", "nope")), DataFilters(symbols=(" ",)),
    DataFilters(assets=("1", "x2", "X3")), DataFilters(assets=("x4",)),
    DataFilters(assets=("",)), DataFilters(q="a%_\\"), DataFilters(q="é"),
    DataFilters(quality="ok"), DataFilters(quality="flagged"),
    DataFilters(since=datetime(2021, 1, 2, tzinfo=timezone.utc),
                until=datetime(2021, 1, 5, tzinfo=timezone.utc), source="coingecko"),
]


@pytest.fixture
def rows(clean_db: Engine) -> Iterator[Engine]:
    """current_quotes with ties, NULLs, flagged quotes and multi-byte names; an autocommit
    engine on them (what the API reads the page with)."""
    with clean_db.begin() as conn:
        for index in range(12):
            asset_id = conn.execute(text(
                "INSERT INTO assets (slug, symbol, name) VALUES (:slug, :sym, :name) "
                "RETURNING id"), {"slug": f"x{index}", "sym": f"S{index % 3}",
                                  "name": ["é", "a%_\\b", "c", "d"][index % 4]}).scalar_one()
            for source in ("coingecko", "csv"):
                conn.execute(text(
                    "INSERT INTO current_quotes (asset_id, source, symbol, name, "
                    "source_asset_id, observed_at, price_usd, market_cap_usd, volume_24h_usd, "
                    "rank, quality) VALUES (:a, :s, :sym, 'n', :sid, "
                    "timestamptz '2021-01-01' + :i * interval '1 day', CAST(:p AS numeric), "
                    "CAST(:c AS numeric), CAST(:v AS numeric), :r, CAST(:q AS jsonb))"),
                    {"a": asset_id, "s": source, "sym": f"S{index % 3}", "sid": f"x{index}",
                     "i": index % 6, "p": None if index % 5 == 0 else str(index % 4),
                     "c": str(index * 7 % 5), "v": None if index % 3 == 0 else "1.50",
                     "r": None if index % 4 == 0 else index % 3,
                     "q": _FLAG if index % 3 == 1 else None})
        conn.execute(text("UPDATE current_quotes SET name = a.name FROM assets a "
                          "WHERE a.id = current_quotes.asset_id"))
    engine = create_engine(clean_db.url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.mark.parametrize("sort", [*DATA_SORT_FIELDS, *(f"-{f}" for f in DATA_SORT_FIELDS)])
def test_pages_are_the_general_querys_for_every_filter_and_cursor(
    rows: Engine, clean_db: Engine, sort: str
) -> None:
    """Followed cursor by cursor and at an offset: the same rows, cursors and version."""
    pages = 0
    for filters in FILTERS:
        cursor = None
        for _ in range(30):
            with clean_db.connect() as conn:
                expected = page_rows(conn, filters, sort, 0, 3, cursor, with_version=True)
            assert _page_alone(rows, filters, sort, 0, 3, cursor) == expected, (filters, cursor)
            pages += 1
            cursor = expected[1]
            if cursor is None:
                break
        with clean_db.connect() as conn:
            expected = page_rows(conn, filters, sort, 4, 5, None, with_version=True)
        assert _page_alone(rows, filters, sort, 4, 5, None) == expected
    assert pages > len(FILTERS)


def test_one_text_per_shape_whatever_the_values() -> None:
    """Values are parameters: other values of the same filters reuse the shape's text."""
    first = page_shape(DataFilters(symbols=("A", "B"), q="x"), "-price_usd", 0, 10, None)
    second = page_shape(DataFilters(symbols=("C", "D", "E"), q="y"), "-price_usd", 20, 50, None)
    assert first[0] == second[0] and first[1] != second[1]
    assert page_shape(DataFilters(symbols=("C",)), "-price_usd", 0, 10, None)[0] != first[0]
    from sqlalchemy.dialects.postgresql import psycopg2

    dialect = psycopg2.dialect()  # type: ignore[no-untyped-call]
    text_of = page_text(first[0], dialect)[0]
    assert "ANY (%(symbols)s" in text_of and "%(pattern)s" in text_of
    assert "'x'" not in text_of and "'A'" not in text_of
