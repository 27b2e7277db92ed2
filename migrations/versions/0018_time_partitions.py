"""quotes partitioned by observed_at, raw_line_blocks by fetched_at: the rows moved in chunks

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-15 10:00:00.000000

Both tables become PostgreSQL range-partitioned tables (no extension, no DEFAULT partition;
partitions as shared.storage.partitions makes them: a week of quotes or a month of raw blocks
for recent times, a calendar year for older history). Their keys already suit it: the quotes'
primary key (asset_id, source, observed_at) holds the partition key; raw_line_blocks' becomes
(id, fetched_at), its ids still unique through their sequence. raw_records stays one table:
its dedupe key (source, content_hash) would have to gain fetched_at (docs/storage.md).

A populated database is converted as online as one migration can be, per table:
1. the partitioned copy `<table>_new` is created with the next weeks' partitions, and a
   statement trigger on the old table mirrors every row inserted from then on into it (old
   workers may still be writing);
2. the rows are copied in chunks of CHUNK_PAGES heap pages (a TID range scan reads each page
   once; the table has no index on its time column, so chunks by time range would each scan
   it all), each chunk one transaction with the partitions its days need, progress logged;
3. one short transaction takes the old table's lock, drops it and the trigger and gives the
   new table its name, key name, sequence and view (raw_lines) back.
Nothing references either table by foreign key, no trigger but the mirror is on them, and the
only view is raw_lines. An interrupted upgrade leaves the old table whole and is started over
by the next `make migrate` (the leftovers are dropped first). Measured duration per million
rows: docs/storage.md. The downgrade copies the rows back into plain tables the same way.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import sqlalchemy as sa
from alembic import context, op

from shared.storage.partitions import QUOTES, RAW_LINE_BLOCKS, PartitionedTable
from shared.storage.partitions import create_missing

# revision identifiers, used by Alembic.
revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration.0018")

# 8,192 pages (64 MB) per chunk: ~250,000 quotes, a few seconds each. `flask --app api db
# upgrade -x chunk_pages=N` takes another size (smaller: shorter transactions; tests use it).
CHUNK_PAGES = 8192
# The swap waits this long for the old table's lock (an open batch holds it), then tries again.
SWAP_LOCK_TIMEOUT = "10s"
SWAP_ATTEMPTS = 30

RAW_LINES_VIEW = r"""
CREATE VIEW raw_lines AS
SELECT (b.id << 20) + l.n - 1 AS id,
       b.id AS block_id,
       (l.n - 1)::integer AS line_index,
       b.source,
       b.file_key || ':' || l.line_no AS source_key,
       l.payload,
       substring(b.line_hashes FROM ((l.n - 1) * 32 + 1)::integer FOR 32) AS content_hash,
       b.run_id,
       b.fetched_at
FROM raw_line_blocks b,
     unnest(b.line_numbers, string_to_array(b.payload, E'\n')) WITH ORDINALITY
         AS l(line_no, payload, n)
"""


class _Table(NamedTuple):
    """One table to rebuild: its partitioning, and the keys before and after."""

    spec: PartitionedTable
    partitioned_key: str
    plain_key: str
    sequence: str | None = None
    view: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name


TABLES = (
    _Table(QUOTES, "asset_id, source, observed_at", "asset_id, source, observed_at"),
    _Table(RAW_LINE_BLOCKS, "id, fetched_at", "id", sequence="raw_line_blocks_id_seq",
           view=RAW_LINES_VIEW),
)


def _engine() -> sa.Engine:
    # Every step on a connection and transaction of its own, outside the migration's: the
    # chunks commit one by one.
    return op.get_bind().engine


def _prepare(table: _Table, partitioned: bool) -> None:
    """Step 1: `<table>_new`, (partitioned, with the next weeks' partitions,) and the mirror."""
    name, new = table.name, f"{table.name}_new"
    key = table.partitioned_key if partitioned else table.plain_key
    now = datetime.now(timezone.utc)
    with _engine().begin() as conn:
        _drop_leftovers(conn, table)
        conn.execute(sa.text(
            f"CREATE TABLE {new} (LIKE {name} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
            "INCLUDING STORAGE INCLUDING COMPRESSION)"
            + (f" PARTITION BY RANGE ({table.spec.column})" if partitioned else "")))
        conn.execute(sa.text(f"ALTER TABLE {new} ADD CONSTRAINT pk_{new} PRIMARY KEY ({key})"))
        if partitioned:
            create_missing(conn, table.spec, [(now - timedelta(days=1), now + table.spec.ahead)], now,
                           parent=new)
        # Rows old workers insert from now on reach the new table too (duplicates of rows
        # the chunks copy later are skipped there).
        conn.execute(sa.text(
            f"CREATE FUNCTION {name}_mirror() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"INSERT INTO {new} SELECT * FROM added ON CONFLICT DO NOTHING; RETURN NULL; END $$"))
        conn.execute(sa.text(
            f"CREATE TRIGGER {name}_mirror AFTER INSERT ON {name} REFERENCING NEW TABLE AS "
            f"added FOR EACH STATEMENT EXECUTE FUNCTION {name}_mirror()"))


def _drop_leftovers(conn: sa.Connection, table: _Table) -> None:
    """What an interrupted run of this migration left: the copy and the mirror."""
    conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {table.name}_mirror ON {table.name}"))
    conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {table.name}_mirror()"))
    conn.execute(sa.text(f"DROP TABLE IF EXISTS {table.name}_new"))


def _heaps(conn: sa.Connection, name: str) -> list[tuple[str, int]]:
    """(relation, pages) of each heap holding `name`'s rows: itself, or its partitions."""
    rows = conn.execute(sa.text(
        "SELECT c.relname, pg_relation_size(c.oid) / current_setting('block_size')::int "
        "FROM pg_class c WHERE c.oid = CAST(:t AS regclass) AND c.relkind = 'r' "
        "UNION ALL SELECT c.relname, pg_relation_size(c.oid) / "
        "current_setting('block_size')::int FROM pg_inherits i JOIN pg_class c "
        "ON c.oid = i.inhrelid WHERE i.inhparent = CAST(:t AS regclass) ORDER BY 1"),
        {"t": name})
    return [(relname, int(pages)) for relname, pages in rows]


def _chunk_pages() -> int:
    return max(1, int(context.get_x_argument(as_dictionary=True).get("chunk_pages",
                                                                     CHUNK_PAGES)))


def _copy(table: _Table, partitioned: bool) -> int:
    """Step 2: every row of the old table into `<table>_new`, chunk by chunk; rows copied."""
    name, new, column = table.name, f"{table.name}_new", table.spec.column
    size = _chunk_pages()
    with _engine().connect() as conn:
        heaps = _heaps(conn, name)
        # By name: a partition may order its columns otherwise than its parent
        # (shared.storage.partitions.partition_ddl), so SELECT * of one would not line up.
        columns = conn.execute(sa.text(
            "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute "
            "WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped"),
            {"t": new}).scalar_one()
    total_pages = sum(pages for _, pages in heaps)
    done_pages = copied = 0
    started = time.monotonic()
    log.info("%s: copying %d pages (%.0f MB) in chunks of %d", name, total_pages,
             total_pages * 8192 / 2**20, size)
    for heap, pages in heaps:
        for first in range(0, pages, size):
            chunk = f"ctid >= '({first},0)'::tid AND ctid < '({first + size},0)'::tid"
            with _engine().begin() as conn:
                if partitioned:
                    days = conn.execute(sa.text(
                        f"SELECT DISTINCT date_trunc('day', {column}, 'UTC') FROM {heap} "
                        f"WHERE {chunk}")).scalars().all()
                    create_missing(conn, table.spec,
                                   [(day, day + timedelta(days=1, microseconds=-1))
                                    for day in days], parent=new)
                copied += conn.execute(sa.text(
                    f"INSERT INTO {new} ({columns}) SELECT {columns} FROM {heap} "
                    f"WHERE {chunk} "
                    "ON CONFLICT DO NOTHING")).rowcount
            done_pages += min(size, pages - first)
            seconds = time.monotonic() - started
            log.info("%s: %d%% (%d of %d pages), %d rows in %.0f s (%.0f rows/s)", name,
                     100 * done_pages // total_pages, done_pages, total_pages, copied,
                     seconds, copied / seconds if seconds else 0)
    return copied


def _swap(table: _Table, partitioned: bool) -> None:
    """Step 3: the old table gone, the new one under its name with its key name and view."""
    name, new = table.name, f"{table.name}_new"
    key_name = f"pk_{name}"
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with _engine().begin() as conn:
                conn.execute(sa.text(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
                conn.execute(sa.text(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE"))
                if table.view is not None:
                    conn.execute(sa.text("DROP VIEW raw_lines"))
                if table.sequence is not None:
                    # Owned by the old table's column, the sequence would go with it.
                    conn.execute(sa.text(
                        f"ALTER SEQUENCE {table.sequence} OWNED BY {new}.id"))
                conn.execute(sa.text(f"DROP TABLE {name}"))
                conn.execute(sa.text(f"DROP FUNCTION {name}_mirror()"))
                conn.execute(sa.text(f"ALTER TABLE {new} RENAME TO {name}"))
                conn.execute(sa.text(
                    f"ALTER TABLE {name} RENAME CONSTRAINT pk_{new} TO {key_name}"))
                if table.view is not None:
                    conn.execute(sa.text(table.view))
            return
        except sa.exc.OperationalError as exc:
            if "lock timeout" not in str(exc) or attempt == SWAP_ATTEMPTS:
                raise
            log.info("%s: waiting for open transactions to release the table (attempt %d)",
                     name, attempt)


def _rebuild(table: _Table, partitioned: bool) -> None:
    started = time.monotonic()
    _prepare(table, partitioned)
    copied = _copy(table, partitioned)
    _swap(table, partitioned)
    with _engine().connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            sa.text(f"ANALYZE {table.name}"))
    log.info("%s: %s, %d rows in %.1f s", table.name,
             "partitioned" if partitioned else "one table again", copied,
             time.monotonic() - started)


def _require_tid_range_scans() -> None:
    version = int(op.get_bind().execute(sa.text("SHOW server_version_num")).scalar_one())
    if version < 140000:
        raise RuntimeError("migration 0018 needs PostgreSQL 14 or newer (TID range scans "
                           "copy the rows in chunks; ATTACH PARTITION without blocking)")


def upgrade():
    _require_tid_range_scans()
    with op.get_context().autocommit_block():
        for table in TABLES:
            _rebuild(table, partitioned=True)


def downgrade():
    with op.get_context().autocommit_block():
        for table in TABLES:
            _rebuild(table, partitioned=False)
