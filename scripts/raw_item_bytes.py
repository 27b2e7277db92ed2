"""Bytes on disk per API item: a raw_records row each (before migration 0021) against one
raw_item_blocks row per page: its texts packed by shared.batch.item_texts (zstd against the
first page as key frame, as stored; bzip2 alone, as stored before), or as text[] compressed by
TOAST (lz4, pglz), on a scratch database.

`python -m scripts.raw_item_bytes --ticks 40`: the recorded CoinGecko page (250 coins,
tests/fixtures/coingecko) fetched `--ticks` times, every coin's moving fields (price, market
cap, volume, 24 h figures) drawn afresh and last_updated set to the tick each time, so every
item is new (as upstream every 300 s). Each layout gets the same items; sizes are read
after VACUUM (heap, indexes, TOAST); insert time is the client's wall clock per layout. Then,
in Python alone, each page's texts compressed by zlib at several levels, lzma, bz2 and zstd
alone; zstd with a raw-content dictionary: the page before, a key frame (the first page, or
one every 12 pages), or a dictionary trained on the first 8 pages; per item, bytes and the
process CPU to compress and to decompress (a keyed page: its dictionary built from the key
frame's texts, as a reader does). docs/benchmarks.md has the figures.
"""
from __future__ import annotations

import argparse
import bz2
import json
import lzma
import os
import random
import time
import uuid
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import zstandard

from psycopg2.extras import execute_values
from sqlalchemy import create_engine, make_url, text

from shared.batch.item_texts import SEPARATOR, join_texts, joined_texts, pack_item_texts
from shared.batch.types import content_hash

PAGE = (Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "coingecko"
        / "coins_markets_usd_page1_per250_2025-02-09.json")
MOVING = ("current_price", "market_cap", "fully_diluted_valuation", "total_volume", "high_24h",
          "low_24h", "price_change_24h", "price_change_percentage_24h",
          "market_cap_change_24h", "market_cap_change_percentage_24h")
_RECORDS = """
CREATE TABLE raw_records (
    id bigserial PRIMARY KEY, source varchar(32) NOT NULL, source_key text NOT NULL,
    content_hash bytea NOT NULL, payload text NOT NULL, run_id bigint,
    fetched_at timestamptz NOT NULL DEFAULT now());
CREATE UNIQUE INDEX uq_raw_records_api_content ON raw_records (source, content_hash)
    WHERE source <> 'csv';
"""
# One partition's layout (migration 0021, `payload bytea` stored as packed); the
# alternatives: the texts as text[], compressed by TOAST with `{method}`.
_BLOCKS = """
CREATE TABLE {name} (
    id bigserial, source varchar(32) NOT NULL, items integer NOT NULL,
    source_keys text[] NOT NULL, payload {payload} NOT NULL, item_hashes bytea NOT NULL,
    run_id bigint, fetched_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (id, fetched_at));
CREATE INDEX ON {name} (source, id);
CREATE INDEX ON {name} (run_id);
ALTER TABLE {name} ALTER item_hashes SET STORAGE EXTERNAL,
    ALTER payload SET {storage}, ALTER source_keys SET COMPRESSION lz4;
"""
_SIZES = """
SELECT pg_relation_size(c.oid) AS heap, pg_indexes_size(c.oid) AS index,
       coalesce(pg_total_relation_size(c.reltoastrelid), 0) AS toast,
       pg_total_relation_size(c.oid) AS total
FROM pg_class c WHERE c.relname = :name
"""


def pages(ticks: int, seed: int = 24) -> list[list[tuple[str, str]]]:
    """`ticks` fetches of the recorded page: (coin id, exact item text) per coin."""
    rng = random.Random(seed)
    coins: list[dict[str, Any]] = json.loads(PAGE.read_text())
    start = datetime(2026, 12, 1, tzinfo=timezone.utc)
    fetched = []
    for tick in range(ticks):
        at = (start + timedelta(seconds=300 * tick)).isoformat(timespec="milliseconds")
        page = []
        for coin in coins:
            for name in MOVING:
                value = coin.get(name)
                if isinstance(value, (int, float)):
                    moved = value * (1 + rng.uniform(-0.005, 0.005))
                    coin[name] = round(moved) if isinstance(value, int) else moved
            coin["last_updated"] = at.replace("+00:00", "Z")
            page.append((coin["id"], json.dumps(coin, separators=(",", ":"))))
        fetched.append(page)
    return fetched


TOAST = ("lz4", "pglz")


def _packed(method: str, fetched: list[list[tuple[str, str]]], index: int) -> Any:
    """Page `index`'s texts as the layout `method` stores them (keyed: to the first page)."""
    texts = [item for _, item in fetched[index]]
    if method == "bzip2":
        return bz2.compress(join_texts(texts), 9)
    if method == "packed":
        # Block ids 1, 2, ...: the first page is the key frame of the others, as the writer
        # picks it (one source, one day).
        first = join_texts([item for _, item in fetched[0]])
        return pack_item_texts(texts, None if index == 0 else (1, first))
    return texts


def measure(url: str, ticks: int) -> dict[str, dict[str, float]]:
    """Bytes per item of each layout, on a database made and dropped here."""
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = f"kasparro_rawbytes_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(make_url(url).set(database=name), isolation_level="AUTOCOMMIT")
    try:
        fetched = pages(ticks)
        items = sum(len(page) for page in fetched)
        tables = {"raw_records": None, "blocks_packed": "packed", "blocks_bzip2": "bzip2",
                  "blocks_lz4": "lz4", "blocks_pglz": "pglz"}
        with engine.connect() as conn:
            conn.execute(text(_RECORDS))
            for table, method in tables.items():
                if method:
                    conn.execute(text(_BLOCKS.format(
                        name=table, payload="text[]" if method in TOAST else "bytea",
                        storage="STORAGE EXTERNAL" if method not in TOAST
                        else f"COMPRESSION {method}")))
            cursor = conn.connection.cursor()
            hashes = [[content_hash("coingecko", item) for _, item in page] for page in fetched]
            seconds: dict[str, float] = {}
            for table, method in tables.items():
                started = time.perf_counter()
                for run, page in enumerate(fetched, 1):
                    if not method:
                        execute_values(cursor, "INSERT INTO raw_records (source, source_key, "
                                       "content_hash, payload, run_id) VALUES %s",
                                       [("coingecko", key, h, item, run)
                                        for (key, item), h in zip(page, hashes[run - 1])])
                    else:
                        cursor.execute(
                            f"INSERT INTO {table} (source, items, source_keys, payload, "
                            "item_hashes, run_id) VALUES ('coingecko', %s, %s, %s, %s, %s)",
                            (len(page), [key for key, _ in page],
                             _packed(method, fetched, run - 1), b"".join(hashes[run - 1]),
                             run))
                seconds[table] = time.perf_counter() - started
            conn.execute(text("VACUUM ANALYZE"))
            text_bytes = sum(len(item.encode()) for page in fetched for _, item in page)
            result = {"items": {"count": items, "text": text_bytes / items}}
            for table in tables:
                sizes = conn.execute(text(_SIZES), {"name": table}).mappings().one()
                result[table] = {**{k: v / items for k, v in sizes.items()},
                                 "us": seconds[table] / items * 1e6}
        return result
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


Codec = tuple[Callable[[int, bytes], bytes], Callable[[int, bytes], bytes]]


def _zstd(level: int, reference: Callable[[int], int | None]) -> Codec:
    """zstd at `level`, page k against the texts of page reference(k) (None: alone)."""
    def dictionary(k: int) -> Any:
        ref = reference(k)
        return None if ref is None else zstandard.ZstdCompressionDict(
            _JOINED[ref], dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return ((lambda k, b: zstandard.ZstdCompressor(level=level, dict_data=dictionary(k))
             .compress(b)),
            (lambda k, b: zstandard.ZstdDecompressor(dict_data=dictionary(k)).decompress(b)))


_JOINED: list[bytes] = []


def codecs(ticks: int) -> dict[str, tuple[float, float, float, float]]:
    """Per item: bytes, compression and decompression CPU microseconds of each codec over whole
    pages; per page: milliseconds of CPU to decompress."""
    fetched = pages(ticks)
    _JOINED[:] = [join_texts([item for _, item in page]) for page in fetched]
    items = sum(len(page) for page in fetched)
    ways: dict[str, Codec] = {
        f"zlib-{level}": ((lambda k, b, level=level: zlib.compress(b, level)),
                          lambda k, b: zlib.decompress(b))
        for level in (1, 6, 9)}
    ways.update({"lzma": (lambda k, b: lzma.compress(b), lambda k, b: lzma.decompress(b)),
                 "bz2-9 (stored before)": (lambda k, b: bz2.compress(b, 9),
                                           lambda k, b: bz2.decompress(b))})
    for level in (3, 9, 19):
        ways[f"zstd-{level} alone"] = _zstd(level, lambda k: None)
    for level in (3, 6, 9, 12, 19):
        ways[f"zstd-{level}, the page before"] = _zstd(level, lambda k: k - 1 if k else None)
        ways[f"zstd-{level}, key frame: the first page"] = _zstd(level,
                                                                 lambda k: 0 if k else None)
        ways[f"zstd-{level}, a key frame every 12"] = _zstd(
            level, lambda k: k // 12 * 12 if k % 12 else None)
    # As the writer stores them, read as GET /raw reads them: the key frame decoded too.
    frame = pack_item_texts([item for _, item in fetched[0]])
    ways["stored: zstd-6 keyed, read with its key frame"] = (
        (lambda k, b: pack_item_texts(b.decode().split(SEPARATOR),
                                      (1, _JOINED[0]) if k else None)),
        lambda k, b: joined_texts(b, frame if k else None))
    samples = [item.encode() for page in fetched[:8] for _, item in page]
    trained = zstandard.train_dictionary(64 * 1024, samples)
    for level in (3, 19):
        ways[f"zstd-{level}, 64 KB trained"] = (
            (lambda k, b, level=level: zstandard.ZstdCompressor(
                level=level, dict_data=trained).compress(b)),
            lambda k, b: zstandard.ZstdDecompressor(dict_data=trained).decompress(b))
    found = {}
    for name, (compress, decompress) in ways.items():
        started = time.process_time()
        packed = [compress(k, page) for k, page in enumerate(_JOINED)]
        spent = time.process_time() - started
        started = time.process_time()
        for k, blob in enumerate(packed):
            if decompress(k, blob) != _JOINED[k]:
                raise AssertionError(f"{name}: page {k} does not round-trip")
        read = time.process_time() - started
        found[name] = (sum(map(len, packed)) / items, spent / items * 1e6, read / items * 1e6,
                       read / len(packed) * 1e3)
    return found


def main() -> None:
    """Print bytes per item of each layout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=40)
    parser.add_argument("--database-url", default=os.environ.get(
        "DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    result = measure(args.database_url, args.ticks)
    info = result.pop("items")
    print(f"{int(info['count']):,} items, {info['text']:.0f} B of JSON text each")
    for table, sizes in result.items():
        print(f"{table}: {sizes['total']:.0f} B/item (heap {sizes['heap']:.0f}, "
              f"index {sizes['index']:.0f}, TOAST {sizes['toast']:.0f}); "
              f"{sizes['us']:.0f} us/item to insert")
    for name, (size, write, read, ms) in codecs(args.ticks).items():
        print(f"{name}: {size:.0f} B/item, CPU {write:.1f} us/item to compress, {read:.2f} "
              f"us/item ({ms:.2f} ms/page) to decompress")


if __name__ == "__main__":
    main()
