"""How a page's API item texts are stored in raw_item_blocks.payload: zstd, alone or a key frame's.

The texts are joined with NUL (it cannot occur in an item: the texts are JSON, and PostgreSQL
text, where raw_records kept them, cannot hold it either) and compressed by the writer rather
than by TOAST: lz4 and pglz only find repeats, and the digits of the items' numbers do not
repeat. The payload's first byte names its codec, so every payload ever written decodes:

- ``BZh`` (a bzip2 stream's magic): pages written before zstd, bzip2 alone;
- TAG_ALONE: zstd alone, a "key frame";
- TAG_KEYED: an 8-byte block id, then zstd with that key frame's texts as a raw-content
  dictionary. Consecutive fetches of a page repeat most of each item (names, images, the
  figures that did not move), so a keyed page keeps ~111 B an item where bzip2 alone kept 190 B,
  at a sixth of its CPU (docs/benchmarks.md). The chain is one hop (a key frame is never keyed),
  so decoding a page reads at most two, and a key frame is of the page's source and UTC day:
  partitions hold whole days, so dropping one never leaves a page without its key frame.

One owner: the writer packs (shared.ingest.key_frames picks the key frame); the raw queries,
migration 0021 and the tests unpack through `stored_texts`.
"""
from __future__ import annotations

import bz2
from datetime import datetime
from typing import Any, Iterable, Sequence

import zstandard
from sqlalchemy import text

# Against a key frame, level 6 keeps 111 B an item for 10 us to compress; 3 keeps 135 B, 9 and 12
# no fewer than 6 for 1.6-12x its CPU, 19 keeps 77 B for ~25x (docs/benchmarks.md).
LEVEL = 6
# A match reaches back into the key frame by about its length: the window covers both (up to
# zstd's default decoding limit, 2^27) so a large page (2,000 tickers, ~2 MB) still finds it.
_MAX_WINDOW_LOG = 27
SEPARATOR = "\x00"
TAG_ALONE = 1
TAG_KEYED = 2
_BZIP2 = b"BZh"
_ID_BYTES = 8
# A page is keyed to a key frame only if they share at least this share of the page's items:
# another page of the source (page 2 of the markets against page 1) shares little text.
MIN_SHARED = 0.5

# A key frame of `:source` with id `:id`, of the UTC day of `:at` (the keyed page's fetch).
_KEY_FRAME = text(
    "SELECT payload FROM raw_item_blocks WHERE id = :id AND source = :source "
    "AND fetched_at >= date_trunc('day', CAST(:at AS timestamptz), 'UTC') "
    "AND fetched_at < date_trunc('day', CAST(:at AS timestamptz), 'UTC') + interval '1 day'")


def _dictionary(joined: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(joined, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def join_texts(texts: Sequence[str]) -> bytes:
    """The texts as the bytes a payload compresses (ValueError if one holds a NUL)."""
    if any(SEPARATOR in t for t in texts):
        raise ValueError("an API item's text holds a NUL character")
    return SEPARATOR.join(texts).encode()


def pack_item_texts(texts: Sequence[str], key_frame: tuple[int, bytes] | None = None) -> bytes:
    """The texts as one payload: alone, or against `key_frame` (its block id, joined texts)."""
    joined = join_texts(texts)
    if key_frame is None:
        return bytes([TAG_ALONE]) + zstandard.ZstdCompressor(level=LEVEL).compress(joined)
    block_id, reference = key_frame
    window = min(_MAX_WINDOW_LOG, max(17, (len(reference) + len(joined)).bit_length()))
    params = zstandard.ZstdCompressionParameters.from_level(
        LEVEL, source_size=len(joined), window_log=window)
    compressor = zstandard.ZstdCompressor(compression_params=params,
                                          dict_data=_dictionary(reference))
    return (bytes([TAG_KEYED]) + block_id.to_bytes(_ID_BYTES, "big")
            + compressor.compress(joined))


def key_frame_id(payload: bytes) -> int | None:
    """The block id of the key frame a payload needs, None if it decodes alone."""
    if payload[:1] == bytes([TAG_KEYED]):
        return int.from_bytes(payload[1:1 + _ID_BYTES], "big")
    return None


def joined_texts(payload: bytes, key_frame: bytes | None = None) -> bytes:
    """A payload's texts, NUL-joined; `key_frame`: the stored payload of the block it names."""
    if payload.startswith(_BZIP2):
        return bz2.decompress(payload)
    if payload[:1] == bytes([TAG_ALONE]):
        return zstandard.ZstdDecompressor().decompress(payload[1:])
    if payload[:1] == bytes([TAG_KEYED]):
        if key_frame is None or key_frame_id(key_frame) is not None:
            raise ValueError(f"item texts keyed to block {key_frame_id(payload)} need that "
                             "key frame's payload")
        decompressor = zstandard.ZstdDecompressor(dict_data=_dictionary(joined_texts(key_frame)))
        return decompressor.decompress(payload[1 + _ID_BYTES:])
    raise ValueError(f"item texts in an unknown codec (first byte {payload[:1]!r})")


def unpack_item_texts(payload: bytes, key_frame: bytes | None = None) -> list[str]:
    """The texts of a stored payload, in order (`key_frame` as for joined_texts)."""
    return joined_texts(payload, key_frame).decode().split(SEPARATOR)


def choose_key_frame(keys: Iterable[str],
                     candidates: Iterable[tuple[int, bytes, Iterable[str]]]) -> int | None:
    """The key frame for a page of `keys`, from blocks (id, payload's head, keys).

    A candidate offers its own id if it is a key frame (zstd alone), else the one it names;
    bzip2 pages offer none. The candidate sharing most keys wins if it shares MIN_SHARED of
    the smaller of the two pages (a page of ten moved coins is keyed to the full page's key
    frame): the same page of an earlier fetch.
    """
    wanted = set(keys)
    best, most = None, 0
    for block_id, head, block_keys in candidates:
        offered = block_id if head[:1] == bytes([TAG_ALONE]) else key_frame_id(head)
        theirs = set(block_keys)
        shared = len(wanted & theirs)
        if (offered is not None and shared > most
                and shared >= MIN_SHARED * min(len(wanted), len(theirs))):
            best, most = offered, shared
    return best


def stored_texts(conn: Any, payload: bytes, source: str, fetched_at: datetime,
                 cache: dict[int, bytes] | None = None) -> list[str]:
    """A stored block's texts, reading its key frame if it names one (`conn`: a SQLAlchemy
    connection or session; `cache`: key frames' payloads by id, filled here)."""
    frame_id = key_frame_id(payload)
    if frame_id is None:
        return unpack_item_texts(payload)
    frame = None if cache is None else cache.get(frame_id)
    if frame is None:
        found = conn.execute(_KEY_FRAME, {"id": frame_id, "source": source, "at": fetched_at}
                             ).scalar_one_or_none()
        if found is None:
            raise LookupError(f"{source}: the key frame {frame_id} of a page is not stored")
        frame = bytes(found)
        if cache is not None:
            cache[frame_id] = frame
    return unpack_item_texts(payload, frame)
