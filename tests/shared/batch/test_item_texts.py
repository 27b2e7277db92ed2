"""API item texts packed per page: zstd alone or against a key frame, bzip2 pages still read."""
from __future__ import annotations

import bz2
import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, text

from scripts.raw_item_bytes import pages
from shared.batch.item_texts import (
    SEPARATOR,
    TAG_ALONE,
    TAG_KEYED,
    choose_key_frame,
    join_texts,
    key_frame_id,
    pack_item_texts,
    stored_texts,
    unpack_item_texts,
)
from shared.ingest import key_frames
from shared.storage.partitions import RAW_ITEM_BLOCKS, create_missing

_INSERT = text(
    "INSERT INTO raw_item_blocks (id, source, items, source_keys, payload, item_hashes, "
    "fetched_at) VALUES (:id, 'coingecko', :items, :keys, :payload, :hashes, :at)")


def test_pages_round_trip_alone_keyed_and_as_bzip2() -> None:
    first, second = ([item for _, item in page] for page in pages(2))
    alone = pack_item_texts(first)
    keyed = pack_item_texts(second, (7, join_texts(first)))
    legacy = bz2.compress(SEPARATOR.join(first).encode(), 9)
    assert alone[0] == TAG_ALONE and keyed[0] == TAG_KEYED
    assert (key_frame_id(alone), key_frame_id(keyed), key_frame_id(legacy)) == (None, 7, None)
    assert unpack_item_texts(alone) == unpack_item_texts(legacy) == first
    assert unpack_item_texts(keyed, alone) == unpack_item_texts(keyed, legacy) == second
    # The next fetch of the page repeats most of each item: well under half the bytes.
    assert len(keyed) < len(alone) / 2
    with pytest.raises(ValueError, match="key frame"):
        unpack_item_texts(keyed)
    with pytest.raises(ValueError, match="key frame"):
        unpack_item_texts(keyed, keyed)  # a chain is one hop
    with pytest.raises(ValueError, match="NUL"):
        pack_item_texts(["a\x00b"])
    with pytest.raises(ValueError, match="unknown codec"):
        unpack_item_texts(b"\x09abc")


def test_key_frame_is_the_same_pages_and_never_a_bzip2_page() -> None:
    alone, keyed_to_3 = bytes([TAG_ALONE]), pack_item_texts(["x"], (3, b"x"))[:9]
    keys = ["a", "b", "c", "d"]
    assert choose_key_frame(keys, []) is None
    assert choose_key_frame(keys, [(5, alone, ["a", "x", "y", "z"])]) is None  # 1 of 4
    # Most keys shared, at least half of the smaller page's.
    assert choose_key_frame(keys, [(5, alone, ["a", "x"]), (6, keyed_to_3, ["b", "c", "d"]),
                                   (7, alone, ["c", "d"])]) == 3
    assert choose_key_frame(["a"], [(5, alone, ["a", *"efghijklmn"])]) == 5
    assert choose_key_frame(keys, [(5, b"BZh91AY", ["a", "b", "c", "d"])]) is None


def test_stored_keyed_pages_read_their_key_frame_of_the_same_day_only(
    clean_db: Engine,
) -> None:
    first, second = ([item for _, item in page] for page in pages(2))
    keys = [json.loads(item)["id"] for item in first]
    at = datetime(2026, 12, 7, 12, tzinfo=timezone.utc)
    frame = pack_item_texts(first)
    keyed = pack_item_texts(second, (1, join_texts(first)))
    with clean_db.begin() as conn:
        create_missing(conn, RAW_ITEM_BLOCKS, [(at - timedelta(days=2), at)], at)
        for block_id, payload, when in ((1, frame, at), (2, keyed, at + timedelta(hours=1)),
                                        (3, keyed, at - timedelta(days=1))):
            conn.execute(_INSERT, {"id": block_id, "items": len(keys), "keys": keys,
                                   "payload": payload, "hashes": b"\x00" * 32 * len(keys),
                                   "at": when})
        cache: dict[int, bytes] = {}
        assert stored_texts(conn, keyed, "coingecko", at + timedelta(hours=1), cache) == second
        assert cache == {1: frame}
        assert stored_texts(conn, frame, "coingecko", at) == first
        # A key frame is of the page's UTC day (one partition holds it whole).
        with pytest.raises(LookupError, match="key frame 1"):
            stored_texts(conn, keyed, "coingecko", at - timedelta(days=1))


def test_writer_forgets_a_key_frame_that_is_not_stored(clean_db: Engine) -> None:
    # Its transaction rolled back, or the table was emptied: the next page is stored alone.
    texts = [item for _, item in pages(1)[0]]
    keys = [json.loads(item)["id"] for item in texts]
    key_frames.forget("coingecko")
    raw = clean_db.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT nextval('raw_line_blocks_id_seq')")
        key_frames.remember(cursor, "coingecko", keys, b"\x00" * 32, pack_item_texts(texts))
        assert [f.keys for f in key_frames._FRAMES["coingecko"]] == [frozenset(keys)]
        assert key_frames.find(cursor, "coingecko", keys) is None
        assert key_frames._FRAMES["coingecko"] == []
    finally:
        raw.close()
