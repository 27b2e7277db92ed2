"""API items stored in compressed page blocks

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 19:40:00.000000

raw_records held one row per API item (~1,300 B on disk for ~1,030 B of JSON, too small for
TOAST to compress, plus a unique index on (source, content_hash)). raw_item_blocks holds one row
per fetched page, as raw_line_blocks does for CSV lines: the items' texts compressed together
(shared.batch.item_texts: zstd, against a key frame of the day; TOAST leaves the value as it
is), their source
keys (lz4) and hashes, partitioned monthly on fetched_at (shared.storage.partitions). The view
raw_items shows one row per item, without its text (SQL cannot inflate it; GET /raw does).
Which items are stored: shared.ingest.item_blocks.

The upgrade moves the rows online, in chunks of CHUNK_ROWS ids (`-x chunk_rows=N`), each chunk
one transaction that writes its blocks (one per source, run and fetch time, so every item
keeps its fetched_at) and deletes the rows it moved, with progress logged: an interrupted
upgrade resumes where it stopped. Rows old workers insert meanwhile are moved by the last step,
which locks raw_records and drops it. Record ids change (block id * 2^20 + index, as for raw
lines); block ids come from raw_line_blocks' sequence (a record id names one record of one
source) and start above every old id, so an old id is a 404, never another record.
The downgrade puts the items back into raw_records, one row each, deduplicated as before.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from alembic import context, op

from shared.batch.item_texts import (
    TAG_ALONE,
    choose_key_frame,
    join_texts,
    pack_item_texts,
    stored_texts,
)
from shared.storage.partitions import RAW_ITEM_BLOCKS, create_missing

# revision identifiers, used by Alembic.
revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration.0021")

# Ids per chunk: at ~1 KB a row, ~50 MB read and a few seconds per transaction.
CHUNK_ROWS = 50_000
SWAP_LOCK_TIMEOUT = "10s"
SWAP_ATTEMPTS = 30

_CREATE = """
CREATE TABLE IF NOT EXISTS raw_item_blocks (
    id bigint NOT NULL DEFAULT nextval('raw_line_blocks_id_seq'),
    source varchar(32) NOT NULL,
    items integer NOT NULL,
    source_keys text[] NOT NULL,
    payload bytea NOT NULL,
    item_hashes bytea NOT NULL,
    run_id bigint,
    fetched_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_raw_item_blocks PRIMARY KEY (id, fetched_at),
    CONSTRAINT ck_raw_item_blocks_one_per_item CHECK (cardinality(source_keys) = items
        AND octet_length(item_hashes) = 32 * items)
) PARTITION BY RANGE (fetched_at);
CREATE INDEX IF NOT EXISTS ix_raw_item_blocks_source_id ON raw_item_blocks (source, id);
CREATE INDEX IF NOT EXISTS ix_raw_item_blocks_run_id ON raw_item_blocks (run_id);
ALTER TABLE raw_item_blocks ALTER item_hashes SET STORAGE EXTERNAL,
    ALTER payload SET STORAGE EXTERNAL;
"""
_LZ4 = ("SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
        "WHERE name = 'default_toast_compression'")
RAW_ITEMS_VIEW = """
CREATE OR REPLACE VIEW raw_items AS
SELECT (b.id << 20) + i.n - 1 AS id,
       b.id AS block_id,
       (i.n - 1)::integer AS item_index,
       b.source,
       i.source_key,
       substring(b.item_hashes FROM ((i.n - 1) * 32 + 1)::integer FOR 32) AS content_hash,
       b.run_id,
       b.fetched_at
FROM raw_item_blocks b,
     unnest(b.source_keys) WITH ORDINALITY AS i(source_key, n)
"""
# One chunk of raw_records, in id order: moved into blocks, then deleted.
_CHUNK = ("SELECT source, source_key, content_hash, payload, run_id, fetched_at "
          "FROM raw_records WHERE id >= :low AND id < :high ORDER BY id")
_INSERT_BLOCK = sa.text(
    "INSERT INTO raw_item_blocks (id, source, items, source_keys, payload, item_hashes, run_id, "
    "fetched_at) VALUES (:id, :source, :items, :keys, :payload, :hashes, :run_id, :fetched_at)")
_IDS = sa.text("SELECT nextval('raw_line_blocks_id_seq') FROM generate_series(1, :n)")
_DAYS = ("SELECT DISTINCT date_trunc('day', fetched_at, 'UTC') FROM raw_records "
         "WHERE id >= :low AND id < :high")


def _engine() -> sa.Engine:
    # Every step on a connection and transaction of its own: the chunks commit one by one.
    return op.get_bind().engine


def _chunk_rows() -> int:
    return max(1, int(context.get_x_argument(as_dictionary=True).get("chunk_rows",
                                                                     CHUNK_ROWS)))


def _create() -> None:
    """The table (lz4 where the server has it), its next partitions, its view, its ids."""
    now = datetime.now(timezone.utc)
    with _engine().begin() as conn:
        conn.execute(sa.text(_CREATE))
        if conn.execute(sa.text(_LZ4)).scalar():
            conn.execute(sa.text("ALTER TABLE raw_item_blocks ALTER source_keys "
                                 "SET COMPRESSION lz4"))
        else:
            log.warning("this PostgreSQL has no lz4: raw_item_blocks is compressed with pglz")
        create_missing(conn, RAW_ITEM_BLOCKS, [(now - timedelta(days=1),
                                                now + RAW_ITEM_BLOCKS.ahead)], now)
        conn.execute(sa.text(RAW_ITEMS_VIEW))
        # New ids above every old one: an old id finds nothing rather than another record.
        top = conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM raw_records")).scalar_one()
        conn.execute(sa.text(
            "SELECT setval('raw_line_blocks_id_seq', :v) "
            "WHERE :v > (SELECT last_value FROM raw_line_blocks_id_seq)"),
            {"v": (int(top) >> 20) + 1})


def _move_range(conn: sa.Connection, low: int, high: int) -> int:
    """Move raw_records' ids [low, high) into blocks (partitions first); rows moved."""
    days = conn.execute(sa.text(_DAYS), {"low": low, "high": high}).scalars().all()
    create_missing(conn, RAW_ITEM_BLOCKS,
                   [(day, day + timedelta(days=1, microseconds=-1)) for day in days])
    rows = conn.execute(sa.text(_CHUNK), {"low": low, "high": high}).all()
    # A block per (source, run, fetch time), in the order of their first ids.
    pages: dict[tuple[str, int | None, datetime], list[sa.Row[tuple[object, ...]]]] = {}
    for row in rows:
        pages.setdefault((row.source, row.run_id, row.fetched_at), []).append(row)
    ids = sorted(conn.execute(_IDS, {"n": len(pages)}).scalars()) if pages else []
    # Each page against a key frame of its source and UTC day written by this chunk, as the
    # writer does (shared.ingest.item_blocks): (id, keys, joined texts) by (source, day).
    frames: dict[tuple[str, object], list[tuple[int, list[str], bytes]]] = {}
    blocks = []
    for block_id, ((source, run_id, fetched_at), page) in zip(ids, pages.items()):
        keys, texts = [r.source_key for r in page], [r.payload for r in page]
        day = frames.setdefault((source, fetched_at.astimezone(timezone.utc).date()), [])
        chosen = choose_key_frame(keys, ((i, bytes([TAG_ALONE]), k) for i, k, _ in day))
        reference = next(((i, j) for i, _, j in day if i == chosen), None)
        if reference is None:
            day.append((block_id, keys, join_texts(texts)))
        blocks.append({
            "id": block_id, "source": source, "items": len(page), "keys": keys,
            "payload": pack_item_texts(texts, reference),
            "hashes": b"".join(bytes(r.content_hash) for r in page), "run_id": run_id,
            "fetched_at": fetched_at})
    if blocks:
        conn.execute(_INSERT_BLOCK, blocks)
    conn.execute(sa.text("DELETE FROM raw_records WHERE id >= :low AND id < :high"),
                 {"low": low, "high": high})
    return len(rows)


def _move() -> int:
    """Step 2: the rows there are now, chunk by chunk; how many were moved."""
    size = _chunk_rows()
    with _engine().connect() as conn:
        low, high = conn.execute(sa.text(
            "SELECT coalesce(min(id), 0), coalesce(max(id), -1) FROM raw_records")).one()
    total = max(0, high - low + 1)
    moved = 0
    started = time.monotonic()
    log.info("raw_records: moving ids %d to %d into raw_item_blocks, %d per chunk", low, high,
             size)
    for first in range(low, high + 1, size):
        with _engine().begin() as conn:
            moved += _move_range(conn, first, first + size)
        seconds = time.monotonic() - started
        done = min(first + size, high + 1) - low
        log.info("raw_records: %d%% (%d of %d ids), %d rows in %.0f s (%.0f rows/s)",
                 100 * done // total, done, total, moved, seconds,
                 moved / seconds if seconds else 0)
    return moved


def _swap() -> int:
    """Step 3: rows inserted meanwhile moved too, and raw_records dropped, under its lock."""
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with _engine().begin() as conn:
                conn.execute(sa.text(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
                conn.execute(sa.text("LOCK TABLE raw_records IN ACCESS EXCLUSIVE MODE"))
                low, high = conn.execute(sa.text(
                    "SELECT min(id), max(id) FROM raw_records")).one()
                late = 0 if low is None else _move_range(conn, low, high + 1)
                conn.execute(sa.text("DROP TABLE raw_records"))
            return late
        except sa.exc.OperationalError as exc:
            if "lock timeout" not in str(exc) or attempt == SWAP_ATTEMPTS:
                raise
            log.info("raw_records: waiting for open transactions (attempt %d)", attempt)
    return 0


def upgrade():
    started = time.monotonic()
    with op.get_context().autocommit_block():
        _create()
        moved = _move()
        moved += _swap()
        with _engine().connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                sa.text("ANALYZE raw_item_blocks"))
    log.info("raw_records: %d rows moved into raw_item_blocks in %.1f s", moved,
             time.monotonic() - started)


def downgrade():
    op.create_table(
        'raw_records',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('source', sa.String(length=32), nullable=False),
        sa.Column('source_key', sa.Text(), nullable=False),
        sa.Column('content_hash', sa.LargeBinary(), nullable=False),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.Column('run_id', sa.BigInteger(), nullable=True),
        sa.Column('fetched_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_raw_records'),
    )
    op.create_index('uq_raw_records_api_content', 'raw_records', ['source', 'content_hash'],
                    unique=True, postgresql_where=sa.text("source <> 'csv'"))
    # Oldest first, so the ids keep the order; an item stored twice goes back once.
    conn = op.get_bind()
    blocks = conn.execute(sa.text(
        "SELECT source, source_keys, payload, item_hashes, run_id, fetched_at "
        "FROM raw_item_blocks ORDER BY id")).all()
    key_frames: dict[int, bytes] = {}
    for block in blocks:
        texts = stored_texts(conn, bytes(block.payload), block.source, block.fetched_at,
                             key_frames)
        hashes = bytes(block.item_hashes)
        conn.execute(sa.text(
            "INSERT INTO raw_records (source, source_key, content_hash, payload, run_id, "
            "fetched_at) VALUES (:source, :key, :hash, :payload, :run_id, :fetched_at) "
            "ON CONFLICT (source, content_hash) WHERE source <> 'csv' DO NOTHING"),
            [{"source": block.source, "key": key, "hash": hashes[i * 32:(i + 1) * 32],
              "payload": texts[i], "run_id": block.run_id, "fetched_at": block.fetched_at}
             for i, key in enumerate(block.source_keys)])
    op.execute("DROP VIEW raw_items")
    op.drop_table('raw_item_blocks')
