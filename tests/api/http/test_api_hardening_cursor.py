"""Cursors: forged ones are a 422 naming `cursor`; the API never hands out one it would refuse."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from sqlalchemy import Engine, text

from shared.queries.data import DATA_SORT_FIELDS
from shared.queries.paging import CURSOR_MAX_LENGTH

# Rows as stored before input bounds existed (issue 14): huge and tiny NUMERICs, long names of
# multi-byte and control characters, equal keys (ties), NULLs.
_HUGE = [
    ("1e300", "1e5000", "1" + "0" * 90 + ".5"),
    ("1e300", "1e5000", None),
    ("123456789012345678901234567890123456789012345678901234567890.123456789012345678901"
     "234567890123456789012345678901234567890", "7e-300", "0.5"),
    ("0." + "0" * 16000 + "1", None, "3"),
    ("5", "5", "5"),
    ("5", "5", "5"),
    ("-1e100", "0", "0"),
    (None, None, None),
]
_NAMES = ["\U0001F600" * 300, "\x01" * 300, "é" * 300, "n" * 300, "a", "a", "b", "c"]


@pytest.fixture
def extreme_rows(clean_db: Engine) -> list[tuple[int, str]]:
    """current_quotes rows with the extreme values, 2 sources each (16 rows)."""
    keys: list[tuple[int, str]] = []
    with clean_db.begin() as conn:
        for index, ((price, cap, volume), name) in enumerate(zip(_HUGE, _NAMES)):
            asset_id = conn.execute(text(
                "INSERT INTO assets (slug, symbol, name) VALUES (:slug, :sym, :name) "
                "RETURNING id"), {"slug": f"x{index}", "sym": f"S{index % 3}", "name": name}
            ).scalar_one()
            for source in ("coingecko", "csv"):
                conn.execute(text(
                    "INSERT INTO current_quotes (asset_id, source, symbol, name, "
                    "source_asset_id, observed_at, price_usd, market_cap_usd, volume_24h_usd, "
                    "rank) VALUES (:a, :s, :sym, :name, :sid, now() - :i * interval '1 day', "
                    "CAST(:p AS numeric), CAST(:c AS numeric), CAST(:v AS numeric), :r)"),
                    {"a": asset_id, "s": source, "sym": f"S{index % 3}", "name": name,
                     "sid": f"x{index}", "i": index % 4, "p": price, "c": cap, "v": volume,
                     "r": None if index % 3 == 0 else 2**31 - 1 - index % 2})
                keys.append((asset_id, source))
    return keys


@pytest.mark.parametrize("sort", [*DATA_SORT_FIELDS, *(f"-{f}" for f in DATA_SORT_FIELDS)])
def test_every_cursor_handed_out_is_accepted_and_short(client: Any, extreme_rows: list[Any],
                                                       sort: str) -> None:
    """Paging 3 rows at a time over every sort: each next_cursor works, none is long."""
    seen: list[tuple[int, str]] = []
    url = f"/data?sort={sort}&page_size=3"
    for _ in range(20):
        response = client.get(url)
        assert response.status_code == 200, (url, response.get_json())
        body = response.get_json()
        seen.extend((r["asset_id"], r["source"]) for r in body["data"])
        cursor = body["pagination"]["next_cursor"]
        if cursor is None:
            break
        assert len(cursor) <= CURSOR_MAX_LENGTH
        url = f"/data?sort={sort}&page_size=3&cursor={cursor}"
        # Within gunicorn's request-line limit (4094): a 1e5000 market cap used to make a
        # 6,748-character cursor and a 414; a decimal key is now at most 200 characters.
        assert len(f"GET {url} HTTP/1.1") < 4094
        if sort.lstrip("-") not in ("name", "symbol"):
            assert len(cursor) <= 400, len(cursor)
    assert sorted(set(seen)) == sorted(extreme_rows)
    assert len(seen) == len(set(seen)), "a row was repeated"


def _forge(payload: Any) -> str:
    raw = json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


FORGED = [
    ("price_usd", {"t": "data", "s": "price_usd", "k": "1e200000", "a": 1, "r": "csv"}),
    ("-market_cap_usd", {"t": "data", "s": "-market_cap_usd", "k": "1e-20000", "a": 1,
                         "r": "csv"}),
    ("price_usd", {"t": "data", "s": "price_usd", "k": "NaN", "a": 1, "r": "csv"}),
    ("price_usd", {"t": "data", "s": "price_usd", "k": "-Infinity", "a": 1, "r": "csv"}),
    ("price_usd", {"t": "data", "s": "price_usd", "k": "9" * 500, "a": 1, "r": "csv"}),
    ("price_usd", {"t": "data", "s": "price_usd", "k": 1e308, "a": 1, "r": "csv"}),
    ("price_usd", {"t": "data", "s": "price_usd", "k": ["1"], "a": 1, "r": "csv"}),
    ("price_usd", {"t": "data", "s": "price_usd", "k": {"k": "1"}, "a": 1, "r": "csv"}),
    ("rank", {"t": "data", "s": "rank", "k": 2**80, "a": 1, "r": "csv"}),
    ("rank", {"t": "data", "s": "rank", "k": "1", "a": 1, "r": "csv"}),
    ("asset_id", {"t": "data", "s": "asset_id", "k": -1, "a": -1, "r": "csv"}),
    ("observed_at", {"t": "data", "s": "observed_at", "k": "99999-01-01T00:00:00+00:00",
                     "a": 1, "r": "csv"}),
    ("observed_at", {"t": "data", "s": "observed_at", "k": "2024-01-01T00:00:00", "a": 1,
                     "r": "csv"}),
    ("name", {"t": "data", "s": "name", "k": "a\x00b", "a": 1, "r": "csv"}),
    ("name", {"t": "data", "s": "name", "k": "a", "a": 1, "r": "x" * 100}),
    ("symbol", {"t": "data", "s": "name", "k": "a", "a": 1, "r": "csv"}),
    ("symbol", {"t": "history", "s": "symbol", "k": "a", "a": 1, "r": "csv"}),
    ("symbol", []),
    ("symbol", "just a string"),
    ("price_usd", {"t": "data", "s": "price_usd", "k": "1", "a": 1, "r": "csv", "f": [1]}),
    ("price_usd", {"t": "data", "s": "price_usd", "k": "1", "a": 1, "r": "csv", "f": True}),
    ("-volume_24h_usd", {"t": "data", "s": "-volume_24h_usd", "k": None, "a": 1, "r": "csv"}),
]


@pytest.mark.parametrize(("sort", "payload"), FORGED)
def test_forged_cursors_are_a_422_naming_cursor(client: Any, extreme_rows: list[Any],
                                                sort: str, payload: Any) -> None:
    """A forged cursor is the client's mistake: 422 naming `cursor`, never a 500."""
    response = client.get(f"/data?sort={sort}&cursor={_forge(payload)}")
    assert response.status_code == 422, response.get_json()
    assert "cursor" in response.get_json()["errors"]["query"]


@pytest.mark.parametrize("cursor", ["%00", "a" * (CURSOR_MAX_LENGTH + 1), "!!!!", "e30"])
def test_undecodable_cursors_are_a_422(client: Any, extreme_rows: list[Any],
                                       cursor: str) -> None:
    """Not base64 JSON, too long, or a NUL: 422 naming `cursor`."""
    response = client.get(f"/data?cursor={cursor}")
    assert response.status_code == 422
    assert "cursor" in response.get_json()["errors"]["query"]
