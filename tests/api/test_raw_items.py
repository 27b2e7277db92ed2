"""API items kept one raw_item_blocks row per page: an item fetched again is not stored again,
a changed one is, and GET /raw serves them one by one (shared.ingest.item_blocks)."""
from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, text

from shared.batch.item_texts import key_frame_id
from shared.config import Settings
from tests.api.helpers import run_sources
from tests.conftest import count
from tests.helpers.raw_items import stored_items
from tests.upstream import ReplayUpstream


def _get(client: Any, url: str) -> dict[str, Any]:
    response = client.get(url)
    assert response.status_code == 200, (url, response.get_json())
    body: dict[str, Any] = response.get_json()
    return body


def _coingecko(engine: Engine, settings: Settings) -> dict[str, Any]:
    run: dict[str, Any] = run_sources(engine, settings, ["coingecko"])["runs"][0]
    assert run["status"] == "succeeded", run["error"]
    return run


def test_items_fetched_again_are_kept_once_and_changed_ones_in_a_block_of_their_own(
    clean_db: Engine, api_settings: Settings, upstream: ReplayUpstream, client: Any
) -> None:
    first = _coingecko(clean_db, api_settings)
    assert first["fetched"] == first["raw_inserted"] == 250
    with clean_db.connect() as conn:
        block, items, packed = conn.execute(text(
            "SELECT id, items, octet_length(payload) FROM raw_item_blocks")).one()
        texts = sum(len(item.payload.encode()) for item in stored_items(conn))
    # The page's texts compressed together (shared.batch.item_texts): under half their size.
    assert items == 250 and packed < texts / 2

    # Nothing moved upstream: every quote collides with the same raw hash, no item is stored.
    again = _coingecko(clean_db, api_settings)
    assert (again["fetched"], again["inserted"], again["raw_inserted"]) == (250, 0, 0)
    assert count(clean_db, "raw_item_blocks") == 1

    # Ten coins moved: their ten new items, in one new block, newest first on GET /raw.
    assert upstream.advance(60, endpoint="coingecko", first=10) == 10
    moved = _coingecko(clean_db, api_settings)
    assert (moved["inserted"], moved["raw_inserted"]) == (10, 10)
    with clean_db.connect() as conn:
        blocks = conn.execute(text(
            "SELECT id, items, run_id, substring(payload FROM 1 FOR 9) AS head "
            "FROM raw_item_blocks ORDER BY id")).all()
    assert [(b.items, b.run_id) for b in blocks] == [(250, first["id"]), (10, moved["id"])]
    # Compressed against the first page, its key frame (shared.batch.item_texts): GET /raw
    # reads both.
    assert [key_frame_id(bytes(b.head)) for b in blocks] == [None, block]
    page = _get(client, "/raw/coingecko?page_size=12")
    assert page["pagination"]["total"] == 260
    newest = page["data"][:10]
    assert {r["run_id"] for r in newest} == {moved["id"]}
    assert [r["id"] for r in newest] == [(blocks[1].id << 20) + i for i in range(9, -1, -1)]
    assert page["data"][10]["id"] == (block << 20) + 249
    with clean_db.connect() as conn:
        moved_ids = set(conn.execute(text(
            "SELECT source_asset_id FROM quotes WHERE run_id = :run"),
            {"run": moved["id"]}).scalars())
    assert {json.loads(r["payload"])["id"] for r in newest} == moved_ids
    assert {r["source_key"] for r in newest} == moved_ids
    for record in page["data"]:
        assert _get(client, f"/raw/coingecko/{record['id']}") == record
    by_run = _get(client, f"/raw/coingecko?run_id={first['id']}&page_size=1")
    assert by_run["pagination"]["total"] == 250
