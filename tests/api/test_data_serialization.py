"""GET /data's lean serialization gives the documented schema's bytes, on every loaded record."""
from __future__ import annotations


import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.schemas.data import QuoteRecordSchema, quote_record
from shared.models import CurrentQuote
from shared.queries.data import DATA_RECORD_FIELDS, list_current_quotes
from tests.api.helpers import Loaded, schema_path_body, without_dynamic

URLS = [
    "/data?page_size=100", "/data", "/data?sort=-price_usd&page_size=7",
    "/data?source=coingecko&sort=name", "/data?symbol=btc", "/data?asset=bitcoin,ethereum",
    "/data?q=coin&sort=-market_cap_usd&page=2&page_size=5", "/data?sort=-rank&page_size=3",
    "/data?since=2021-01-01&until=2030-01-01&sort=observed_at",
    "/data?page_size=100&total=true", "/data?q=coin&page=2&page_size=5&total=true",
]


def test_records_serialize_exactly_as_the_documented_schema(loaded: Loaded) -> None:
    """The lean row -> record path gives what QuoteRecordSchema gives, for every record."""
    schema = QuoteRecordSchema()
    with loaded.engine.connect() as conn:
        page = list_current_quotes(conn, limit=10_000)
    with Session(loaded.engine) as session:
        orm = {(q.asset_id, q.source): q for q in session.scalars(select(CurrentQuote))}
    assert len(page.rows) == len(orm) == page.total > 100
    for row in page.rows:
        assert quote_record(row) == schema.dump(orm[(row[0], row[3])])
    assert DATA_RECORD_FIELDS == tuple(schema.fields)


@pytest.mark.parametrize("url", URLS)
def test_answers_are_byte_identical_to_the_schema_path(loaded: Loaded, url: str) -> None:
    """Cached or not, the body is what a marshmallow dump + jsonify of the envelope gives."""
    app = loaded.client.application
    first = loaded.client.get(url, headers={"X-Request-ID": "req-1"})
    again = loaded.client.get(url, headers={"X-Request-ID": "req-2"})
    assert first.status_code == again.status_code == 200
    assert without_dynamic(first.data) == without_dynamic(again.data)
    # The documented path: ORM-free rows through the schema, jsonify'd by the app.
    reference = schema_path_body(app, url, first.get_json())
    assert first.data == reference
    assert first.headers["X-Request-ID"] == "req-1" and again.headers["X-Request-ID"] == "req-2"
