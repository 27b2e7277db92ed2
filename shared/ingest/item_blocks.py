"""API raw items: one block per fetched page (raw_item_blocks, migration 0021); which are kept.

A page's items are stored together in one row, their texts compressed together
(shared.batch.item_texts): one row per item (~1,300 B, its JSON too small for TOAST to
compress) cost several times the quote it carries. A page is compressed against the key frame
this process stored today that shares most of its items (the same page of an earlier fetch,
shared.ingest.key_frames), or is stored alone and becomes one.
There is no index on the items' hashes. An item is stored unless the identical item is stored
already, which its quote tells, as for CSV lines: the same item text always parses to the same
quote key, so a quote that goes in new brings an item never stored, and a quote that collides
with a stored one carrying the same raw hash means its item was stored with it. A run also
remembers the items it found stored or stored itself, so an item met again in the run (a coin
served on two pages while ranks shift) is left out, and so is the item of a reject stored
before with the same text (rejected_records dedupes those). What may be stored twice: an item
without a quote met in another run (a reject at another place) and an item that returns after
its quote's stored item changed (A, B, A: the third is known, B again is not);
docs/storage.md.
"""
from __future__ import annotations

import io
from typing import Any, Iterable, Sequence

from shared.batch.copy_format import (
    COPY_CHUNK_BYTES,
    INT8,
    ITEM_BLOCK_COLUMNS,
    QUOTE_HASH_BYTES,
    STORED_HASH_PREFIX,
    binary_copy,
    binary_row,
    text_array,
)
from shared.batch.item_texts import pack_item_texts
from shared.batch.types import RawItem, Rejected
from shared.ingest import key_frames
from shared.models import RAW_LINE_ID_BITS

_COPY_ITEM_BLOCK = (f"COPY raw_item_blocks ({', '.join(ITEM_BLOCK_COLUMNS)}) "
                    "FROM STDIN WITH (FORMAT binary)")

# The staged quotes whose key is stored already with the same raw hash: their items are stored.
# Both hashes as quotes keep them (QUOTE_HASH_BYTES of the item's SHA-256).
_STAGED_SAME_ITEM = (
    "SELECT s.raw_hash FROM stage_quotes s JOIN quotes q ON q.asset_id = s.asset_id "
    "AND q.source = s.source AND q.observed_at = s.observed_at "
    f"WHERE {STORED_HASH_PREFIX} = s.raw_hash"
)


class StoredItems:
    """The items one run knows are stored: found through its batches' staged quotes, or
    stored by its batches (one per writer, so per run: a failed batch ends the run).

    `find` runs only when the quotes went through staging (some keys may be stored); when
    their COPY went straight in, every quote was new and so was every item.
    """

    def __init__(self) -> None:
        self.hashes: set[bytes] = set()

    def find(self, cursor: Any) -> None:
        """Add the hashes of staged quotes' items stored already (before the INSERT)."""
        cursor.execute(_STAGED_SAME_ITEM)
        self.hashes.update(bytes(raw_hash) for raw_hash, in cursor.fetchall())


def repeated_reject_payloads(rejects: Iterable[Rejected], repeated: set[str]) -> set[str]:
    """The texts of the rejects stored before at the same place (`repeated`: locations)."""
    return {r.payload for r in rejects if r.location in repeated}


def copy_item_block(
    cursor: Any, source: str, run_id: int, items: Sequence[RawItem], stored: StoredItems,
    repeated_rejects: set[str],
) -> int:
    """Store a page's items as one raw_item_blocks row, in page order; how many it holds.

    Left out: items known stored (`stored`, which learns the ones stored here), an item
    repeated within the page after its first, and items whose text is that of a reject
    stored before (`repeated_rejects`).
    """
    seen = stored.hashes
    keep: list[RawItem] = []
    for item in items:
        prefix = item.hash[:QUOTE_HASH_BYTES]
        if prefix in seen or item.payload in repeated_rejects:
            continue
        seen.add(prefix)
        keep.append(item)
    if not keep:
        return 0
    if len(keep) >= 1 << RAW_LINE_ID_BITS:
        # A record's id holds its index in the block in this many bits (shared.models).
        raise ValueError(f"{source}: a page of {len(keep)} items is too large for one block")
    keys = [item.source_key for item in keep]
    frame = key_frames.find(cursor, source, keys)
    payload = pack_item_texts([item.payload for item in keep], frame)
    row = binary_row(
        source.encode(), len(keep).to_bytes(4, "big"), text_array(keys), payload,
        b"".join(item.hash for item in keep), INT8.pack(run_id),
    )
    cursor.copy_expert(_COPY_ITEM_BLOCK, io.BytesIO(binary_copy(row)), COPY_CHUNK_BYTES)
    if frame is None:
        key_frames.remember(cursor, source, keys, keep[0].hash, payload)
    return len(keep)
