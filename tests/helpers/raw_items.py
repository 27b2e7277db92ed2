"""API raw items with their texts, read from raw_item_blocks (the view raw_items has no text:
SQL cannot inflate the compressed pages, shared.batch.item_texts)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, text

from shared.batch.item_texts import stored_texts
from shared.models import RAW_LINE_ID_BITS


class StoredItem(NamedTuple):
    """One stored API item, as GET /raw would show it."""

    source: str
    source_key: str
    payload: str
    run_id: int | None
    content_hash: bytes
    fetched_at: datetime
    id: int


def stored_items(conn: Connection, where: str = "TRUE", **params: Any) -> list[StoredItem]:
    """Every item of the blocks matching `where` (SQL over raw_item_blocks), in id order."""
    items = []
    key_frames: dict[int, bytes] = {}
    for block in conn.execute(text(
            "SELECT id, source, source_keys, payload, item_hashes, run_id, fetched_at "
            f"FROM raw_item_blocks WHERE {where} ORDER BY id"), params):
        texts = stored_texts(conn, bytes(block.payload), block.source, block.fetched_at,
                             key_frames)
        hashes = bytes(block.item_hashes)
        items += [StoredItem(block.source, key, texts[i], block.run_id,
                             hashes[i * 32:(i + 1) * 32], block.fetched_at,
                             (block.id << RAW_LINE_ID_BITS) + i)
                  for i, key in enumerate(block.source_keys)]
    return items
