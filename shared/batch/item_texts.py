"""How a page's API item texts are stored in raw_item_blocks.payload: NUL-separated, bzip2.

Compressed here rather than by TOAST: lz4 and pglz only find repeats, and the digits of the
items' numbers do not repeat; an entropy coder shrinks them too. On a page of CoinGecko items
(docs/benchmarks.md) bzip2 keeps 190 B an item, zlib 258 B (level 6), lz4 ~503 B, for 1-3x
zlib's compression time; its reads cost more (~10 ms to open a page of 250 items against zlib's
~1 ms), and reads are GET /raw's, an audit endpoint. NUL cannot occur in an item: the
texts are JSON, and PostgreSQL text (where raw_records kept them) cannot hold it either. One
owner: the writer packs; the raw queries, migration 0021 and the tests unpack.
"""
from __future__ import annotations

import bz2
from typing import Sequence

# bzip2's block of 900 KB (level 9) holds a page of 250 items whole; smaller levels cost more
# bytes (level 1: 7% more) and no less time.
LEVEL = 9
SEPARATOR = "\x00"


def pack_item_texts(texts: Sequence[str]) -> bytes:
    """The texts as one compressed value (ValueError if one holds a NUL)."""
    if any(SEPARATOR in t for t in texts):
        raise ValueError("an API item's text holds a NUL character")
    return bz2.compress(SEPARATOR.join(texts).encode(), LEVEL)


def unpack_item_texts(payload: bytes) -> list[str]:
    """The texts of a stored payload, in order."""
    return bz2.decompress(payload).decode().split(SEPARATOR)
