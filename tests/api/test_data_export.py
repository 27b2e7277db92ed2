"""GET /data as CSV and NDJSON on every source loaded: the JSON pages' records, exact."""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from tests.api.helpers import Loaded


def _pages(loaded: Loaded, query: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        response = loaded.client.get(f"/data?{query}&page_size=500"
                                     + (f"&cursor={cursor}" if cursor else ""))
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        body = response.get_json()
        records += body["data"]
        cursor = body["pagination"]["next_cursor"]
        if cursor is None:
            return records


def _as_csv_values(record: dict[str, Any]) -> dict[str, str]:
    values = {k: "" if v is None else str(v) for k, v in record.items() if k != "quality"}
    values["quality"] = record["quality"]["status"]
    values["flags"] = ";".join(sorted({f["flag"] for f in record["quality"]["flags"]}))
    return values


def test_data_csv_is_the_json_pages_records_in_their_order(loaded: Loaded) -> None:
    for query in ("sort=-price_usd", "sort=asset_id&source=coingecko"):
        pages = _pages(loaded, query)
        response = loaded.client.get(f"/data?{query}&format=csv")
        assert response.status_code == 200 and response.is_streamed
        rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
        assert len(rows) == len(pages) > 50, query
        assert rows == [_as_csv_values(r) for r in pages], query


def test_accept_ndjson_is_not_answered_from_the_json_cache(loaded: Loaded) -> None:
    query = "/data?source=coinpaprika&sort=-market_cap_usd"
    first = loaded.client.get(query)  # now in the page cache under this query string
    assert first.status_code == 200 and first.mimetype == "application/json"
    response = loaded.client.get(query, headers={"Accept": "application/x-ndjson"})
    assert response.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    pages = _pages(loaded, "source=coinpaprika&sort=-market_cap_usd")
    assert [(r["asset_id"], r["market_cap_usd"], r["observed_at"]) for r in lines] == [
        (r["asset_id"], r["market_cap_usd"], r["observed_at"]) for r in pages]
    assert loaded.client.get(query + "&format=xml").status_code == 422
