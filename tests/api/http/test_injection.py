"""SQL-injection-shaped values in every filter, sort and path parameter change nothing."""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.api.helpers import Loaded, table_checksums

PAYLOADS = [
    "' OR '1'='1",
    "' OR 1=1 --",
    "1 OR 1=1",
    "1; DROP TABLE quotes; --",
    "'; TRUNCATE assets CASCADE; --",
    "btc' UNION SELECT id, slug, name FROM assets --",
    "%' AND 1=1 --",
    "\\'; DELETE FROM runs; --",
    "1)) OR ((1=1",
    "$$; DROP TABLE jobs; $$",
    "asset_id; DROP TABLE current_quotes",
    "-asset_id,(SELECT 1)",
    "price_usd DESC NULLS FIRST; --",
    "\u0000'; --",
    "eyJ0IjoiZGF0YSIsInMiOiJhc3NldF9pZCIsImsiOiIxIE9SIDE9MSIsImEiOjEsInIiOiInOyBEUk9QIn0",
]

# (path template, parameter) for every query parameter; "{}" marks a path parameter.
QUERY_PARAMS = {
    "/data": ["source", "symbol", "asset", "q", "since", "until", "sort", "page", "page_size",
              "cursor"],
    "/data/bitcoin/history": ["source", "since", "until", "page", "page_size", "cursor"],
    "/raw/csv": ["run_id", "page", "page_size", "cursor"],
    "/runs": ["source", "status", "job_id", "since", "until", "page", "page_size", "cursor"],
    "/runs/compare": ["a", "b"],
}
PATHS = ["/data/{}", "/data/{}/history", "/raw/{}", "/raw/csv/{}", "/runs/{}", "/jobs/{}"]


def _empty_or_refused(response: Any) -> bool:
    if 400 <= response.status_code < 500:
        return bool(response.get_json()["code"] == response.status_code)
    body = response.get_json()
    return response.status_code == 200 and body["data"] == []


@pytest.fixture(scope="module")
def checksums(loaded: Loaded) -> dict[str, str]:
    """Table checksums of the loaded database before any hostile request."""
    return table_checksums(loaded.engine)


def test_hostile_values_are_refused_or_match_nothing(
    loaded: Loaded, checksums: dict[str, str]
) -> None:
    sent = 0
    for path, params in QUERY_PARAMS.items():
        for param in params:
            for payload in PAYLOADS:
                other = "&b=1" if param == "a" else "&a=1" if param == "b" else ""
                response = loaded.client.get(f"{path}?{param}={quote(payload)}{other}")
                sent += 1
                assert response.status_code < 500, (path, param, payload)
                if path != "/runs/compare":
                    assert _empty_or_refused(response), (path, param, payload,
                                                         response.get_json())
                else:
                    assert response.status_code == 422, (param, payload)
    for template in PATHS:
        for payload in PAYLOADS:
            response = loaded.client.get(template.format(quote(payload, safe="")))
            sent += 1
            assert response.status_code in (404, 422), (template, payload, response.status_code)
    assert sent > 500
    assert table_checksums(loaded.engine) == checksums


def test_sort_refuses_anything_but_the_allow_list(loaded: Loaded) -> None:
    for payload in PAYLOADS + ["assets.id", "1", "random()", "asset_id desc"]:
        response = loaded.client.get(f"/data?sort={quote(payload)}")
        assert response.status_code == 422
        assert "sort" in response.get_json()["errors"]["query"]


def test_search_wildcards_and_quotes_are_literal(loaded: Loaded, checksums: dict[str, str]
                                                 ) -> None:
    everything = loaded.client.get("/data?page_size=1&total=true").get_json()["pagination"][
        "total"]
    for q in ("%", "_", "%%", "\\", "'", "\"", "%' OR '1'='1"):
        body = loaded.client.get(f"/data?q={quote(q)}&page_size=500&total=true").get_json()
        assert body["pagination"]["total"] < everything
        assert all(q in r["name"] + r["symbol"] for r in body["data"]), q
    assert table_checksums(loaded.engine) == checksums
