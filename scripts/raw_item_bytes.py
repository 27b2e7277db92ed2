"""Bytes on disk per API item: a raw_records row each (before migration 0021) against one
raw_item_blocks row per page (lz4, and pglz for comparison), on a scratch database.

`python -m scripts.raw_item_bytes --ticks 40`: the recorded CoinGecko page (250 coins,
tests/fixtures/coingecko) fetched `--ticks` times, every coin's moving fields (price, market
cap, volume, 24 h figures) drawn afresh and last_updated set to the tick each time, so every
item is new (as upstream every 300 s). Each layout gets the same items; sizes are read
after VACUUM (heap, indexes, TOAST); insert time is the client's wall clock per layout.
docs/benchmarks.md has the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from psycopg2.extras import execute_values
from sqlalchemy import create_engine, make_url, text

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
# One partition's layout (migration 0021), compressed with `{method}`.
_BLOCKS = """
CREATE TABLE {name} (
    id bigserial, source varchar(32) NOT NULL, items integer NOT NULL,
    source_keys text[] NOT NULL, payloads text[] NOT NULL, item_hashes bytea NOT NULL,
    run_id bigint, fetched_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (id, fetched_at));
CREATE INDEX ON {name} (source, id);
CREATE INDEX ON {name} (run_id);
ALTER TABLE {name} ALTER item_hashes SET STORAGE EXTERNAL,
    ALTER payloads SET COMPRESSION {method}, ALTER source_keys SET COMPRESSION {method};
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
        tables = {"raw_records": None, "blocks_lz4": "lz4", "blocks_pglz": "pglz"}
        with engine.connect() as conn:
            conn.execute(text(_RECORDS))
            for table, method in tables.items():
                if method:
                    conn.execute(text(_BLOCKS.format(name=table, method=method)))
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
                            f"INSERT INTO {table} (source, items, source_keys, payloads, "
                            "item_hashes, run_id) VALUES ('coingecko', %s, %s, %s, %s, %s)",
                            (len(page), [key for key, _ in page], [item for _, item in page],
                             b"".join(hashes[run - 1]), run))
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


if __name__ == "__main__":
    main()
