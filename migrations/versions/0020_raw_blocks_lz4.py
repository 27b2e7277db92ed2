"""raw_line_blocks' payload and hashes compressed with lz4 instead of pglz

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 19:00:00.000000

A CSV batch stores its lines as one raw_line_blocks row (~4 MB for 25,000 lines), which TOAST
compresses. pglz took most of that COPY's server time: 20 blocks of 25,000 bench lines cost
2.8 s of backend CPU with pglz and 0.8 s with lz4, for 13% more bytes (docs/benchmarks.md).
Only the compression of new values changes (no rewrite; old values stay readable): on the
table and on each partition, since ALTER COLUMN ... SET COMPRESSION does not reach existing
partitions, while new ones copy it (shared.storage.partitions: LIKE ... INCLUDING COMPRESSION).
A server built without lz4 keeps pglz (logged).
"""
from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration.0020")

_TABLES = """
SELECT 'raw_line_blocks' UNION ALL
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'raw_line_blocks'::regclass
ORDER BY 1
"""
_LZ4 = ("SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
        "WHERE name = 'default_toast_compression'")


def _set(method: str) -> None:
    conn = op.get_bind()
    for (table,) in conn.execute(sa.text(_TABLES)).all():
        conn.execute(sa.text(
            f'ALTER TABLE "{table}" ALTER COLUMN payload SET COMPRESSION {method}, '
            f"ALTER COLUMN line_hashes SET COMPRESSION {method}"))


def upgrade():
    if not op.get_bind().execute(sa.text(_LZ4)).scalar():
        log.warning("this PostgreSQL has no lz4: raw_line_blocks stays compressed with pglz")
        return
    _set("lz4")


def downgrade():
    _set("default")
