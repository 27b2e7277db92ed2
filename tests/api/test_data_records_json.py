"""GET /data's records written as JSON text: the bytes of the schema path for awkward values."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, text

from api.schemas.data import quote_record, quote_records_json
from shared.config import Settings
from shared.queries.data import list_current_quotes
from tests.api.helpers import schema_path_body, without_dynamic

# Names the JSON encoder escapes: non-ASCII (one beyond the BMP: a surrogate pair), control
# characters, DEL, quotes and backslashes; plain ones for contrast.
_NAMES = ["\U0001F600 coin", "caf\u00e9", "tab\tnew\nline\x01", "del\x7f", 'q"u\\o/te',
          "plain", "\u2028sep\u2029", "\u00ff" * 40]
# A flagged quality as the writer stores it, keys in no sorted order, nested evidence.
_FLAGGED = {"flags": [{"reason": "jump of 80% \u00e9", "flag": "jump",
                       "evidence": {"rule": "x > 0.5", "value": 0.8, "base": 1e-7,
                                    "nested": {"b": [1, 2.5, None, True], "a": "\u2603"}}}]}


@pytest.fixture
def awkward_rows(clean_db: Engine) -> int:
    """current_quotes rows with the values above, null and huge money, ranks or none."""
    count = 0
    with clean_db.begin() as conn:
        for index, name in enumerate(_NAMES):
            asset_id = conn.execute(text(
                "INSERT INTO assets (slug, symbol, name) VALUES (:slug, :sym, :name) "
                "RETURNING id"), {"slug": f"w{index}", "sym": f"\u00c9{index}", "name": name}
            ).scalar_one()
            for source in ("coingecko", "csv"):
                conn.execute(text(
                    "INSERT INTO current_quotes (asset_id, source, symbol, name, "
                    "source_asset_id, observed_at, price_usd, market_cap_usd, volume_24h_usd, "
                    "rank, quality) VALUES (:a, :s, :sym, :name, :sid, "
                    "timestamptz '2021-03-04 05:06:07.000890+00' + :i * interval '1.5 second', "
                    "CAST(:p AS numeric), CAST(:c AS numeric), CAST(:v AS numeric), :r, "
                    "CAST(:q AS jsonb))"),
                    {"a": asset_id, "s": source, "sym": f"\u00c9{index}", "name": name,
                     "sid": f"{name}:{source}", "i": index % 3,
                     "p": None if index % 4 == 0 else f"0.{index:0>30}1",
                     "c": None if index % 3 == 1 else "1" + "0" * 120,
                     "v": "0" if index % 2 else "123.4500",
                     "r": None if index % 3 == 0 else 2**31 - 1 - index,
                     "q": json.dumps(_FLAGGED) if index % 2 else None})
                count += 1
    return count


@pytest.mark.parametrize("url", ["/data?page_size=100", "/data?sort=-name&page_size=7",
                                 "/data?page_size=100&total=true"])
def test_awkward_values_are_written_as_the_schema_path_writes_them(
    awkward_rows: int, settings: Settings, clean_db: Engine, url: str
) -> None:
    from api import create_app

    app = create_app({"TESTING": True, "RATELIMIT_ENABLED": False}, settings=settings)
    client = app.test_client()
    first = client.get(url, headers={"X-Request-ID": "req-1"})
    again = client.get(url, headers={"X-Request-ID": "req-2"})  # from the answer cache
    assert first.status_code == again.status_code == 200
    assert without_dynamic(first.data) == without_dynamic(again.data)
    body = first.get_json()
    with clean_db.connect() as conn:
        rows = {(r[0], r[3]): r for r in list_current_quotes(conn, limit=1000).rows}
    assert len(rows) == awkward_rows
    assert body["data"] == [quote_record(rows[(r["asset_id"], r["source"])])
                            for r in body["data"]]
    reference = schema_path_body(app, url, body)
    assert first.data == reference
    if "page_size=100" in url:  # every row: the escapes were written
        assert b"\\ud83d\\ude00" in first.data and b"\\u007f" in first.data


def test_other_providers_and_debug_output_are_left_to_the_provider(
    awkward_rows: int, settings: Settings, clean_db: Engine
) -> None:
    """Only Flask's default provider writing compact JSON is mirrored; else None, and the
    answer is the provider's own (indented in debug mode)."""
    from api import create_app

    app = create_app({"TESTING": True, "RATELIMIT_ENABLED": False}, settings=settings)
    with clean_db.connect() as conn:
        rows = list_current_quotes(conn, limit=1000).rows
    with app.app_context():
        written = quote_records_json(rows, app.json, debug=False)
        assert written is not None
        assert written == app.json.response([quote_record(r) for r in rows]).get_data(
            as_text=True).rstrip("\n")
        assert quote_records_json(rows, app.json, debug=True) is None
    app.debug = True
    response = app.test_client().get("/data?page_size=3")
    assert response.status_code == 200 and b'\n  "data": [\n' in response.data
    assert response.get_json()["data"] == [quote_record(r) for r in rows[:3]]
