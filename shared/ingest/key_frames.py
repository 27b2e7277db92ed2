"""The key frames this process wrote, per source: which one a new API page is compressed against.

A page's texts are compressed against a key frame, a page of the same source and UTC day stored
alone (shared.batch.item_texts). The writer remembers the key frames it stored rather than
asking the table: finding the same page of the last fetch among the day's blocks meant
reading the keys of hundreds of blocks per page (68 pages a fetch at 17,000 coins), which
doubled a tick's time. A process that has none (just started, or another worker wrote the
source's pages) stores its page alone and remembers it: a few key frames more a day.
Before use a key frame is checked in the table (id, source, day, first item's hash): its
transaction may have rolled back, the day may have turned, or the ids may have restarted.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

from shared.batch.item_texts import choose_key_frame, joined_texts

# 17,000 coins are 68 pages a fetch, one key frame each a day; their payloads are compressed
# (~60 KB for 250 items), ~4 MB per source at most.
MAX_PER_SOURCE = 128
_TAG_ALONE_HEAD = b"\x01"

# The key frame `id` of `source` is stored, of today (UTC, as the new block's fetched_at =
# now(): one partition holds a day whole), with that first item's hash and payload size.
_STILL_STORED = (
    "SELECT 1 FROM raw_item_blocks WHERE id = %s AND source = %s "
    "AND substring(item_hashes FROM 1 FOR 32) = %s AND octet_length(payload) = %s "
    "AND fetched_at >= date_trunc('day', now(), 'UTC') "
    "AND fetched_at < date_trunc('day', now(), 'UTC') + interval '1 day'")
# The id the block just copied took (raw_item_blocks' default: this sequence; per session).
_LAST_ID = "SELECT currval('raw_line_blocks_id_seq')"


@dataclass(frozen=True)
class KeyFrame:
    """A page stored alone by this process."""

    id: int
    keys: frozenset[str]
    first_hash: bytes
    payload: bytes


_FRAMES: dict[str, list[KeyFrame]] = {}
_LOCK = threading.Lock()


def find(cursor: Any, source: str, keys: Sequence[str]) -> tuple[int, bytes] | None:
    """The key frame for a page of `keys` (its id and joined texts), None to store it alone."""
    frames: dict[int, KeyFrame] = {}
    with _LOCK:
        # Newest first: of frames sharing as many keys, the latest page wins; of two with one
        # id (ids restarted: a new database), the newer one.
        for frame in reversed(_FRAMES.get(source, [])):
            frames.setdefault(frame.id, frame)
    while frames:
        chosen = choose_key_frame(keys, ((f.id, _TAG_ALONE_HEAD, f.keys)
                                         for f in frames.values()))
        if chosen is None:
            return None
        frame = frames.pop(chosen)
        cursor.execute(_STILL_STORED, (frame.id, source, frame.first_hash,
                                       len(frame.payload)))
        if cursor.fetchone() is not None:
            return frame.id, joined_texts(frame.payload)
        forget(source, frame.id)
    return None


def remember(cursor: Any, source: str, keys: Sequence[str], first_hash: bytes,
             payload: bytes) -> None:
    """Remember the page stored alone just now (the last block this session copied)."""
    cursor.execute(_LAST_ID)
    block_id = int(cursor.fetchone()[0])
    with _LOCK:
        frames = _FRAMES.setdefault(source, [])
        frames.append(KeyFrame(block_id, frozenset(keys), first_hash, payload))
        del frames[:-MAX_PER_SOURCE]


def forget(source: str, block_id: int | None = None) -> None:
    """Forget a key frame of `source` (every one when `block_id` is None)."""
    with _LOCK:
        _FRAMES[source] = [f for f in _FRAMES.get(source, ())
                           if block_id is not None and f.id != block_id]
