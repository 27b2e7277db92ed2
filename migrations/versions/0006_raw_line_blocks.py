"""CSV raw lines are stored one block per batch (raw_line_blocks), not one row per line

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 09:30:00.000000

Measured on a 1,000,000-line CSV (`make bench`, backend CPU seconds on this machine): one
raw_records row per line cost 4.5-5.5 s, as much as a bare COPY of the whole file, of which
~1.8 s was the primary-key btree (one WAL record per index insert) and ~1 s the bigserial's
nextval. A block row per batch (the batch's lines, their line numbers and their SHA-256
hashes) costs ~1.5 s, and the worker no longer renders a COPY row per line. Each line is still
kept exactly as read, with its source, fetch time, run id and content hash: the view
`raw_lines` shows them one row per line, with the id GET /raw/csv/<id> uses
(block id * 2^20 + index in the block).

The CSV lines already in raw_records move into blocks, one per (run, file).
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

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


def upgrade():
    op.create_table(
        'raw_line_blocks',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('source', sa.String(length=32), nullable=False),
        sa.Column('file_key', sa.Text(), nullable=False),
        sa.Column('line_numbers', postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.Column('line_hashes', sa.LargeBinary(), nullable=False),
        sa.Column('run_id', sa.BigInteger(), nullable=True),
        sa.Column('fetched_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.CheckConstraint('octet_length(line_hashes) = 32 * cardinality(line_numbers)',
                           name=op.f('ck_raw_line_blocks_hash_per_line')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_raw_line_blocks')),
    )
    # Hashes do not compress: keep them out of the compressor. The lines compress ~2x; lz4
    # (where the server has it) does that several times faster than the default pglz.
    op.execute("ALTER TABLE raw_line_blocks ALTER line_hashes SET STORAGE EXTERNAL")
    op.execute("""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'
                       AND 'lz4' = ANY(enumvals)) THEN
                ALTER TABLE raw_line_blocks ALTER payload SET COMPRESSION lz4;
            END IF;
        END $$
    """)
    op.execute(RAW_LINES_VIEW)
    op.execute(r"""
        INSERT INTO raw_line_blocks (source, file_key, line_numbers, payload, line_hashes,
                                     run_id, fetched_at)
        SELECT source, file_key,
               array_agg(line_no ORDER BY id), string_agg(payload, E'\n' ORDER BY id),
               string_agg(content_hash, ''::bytea ORDER BY id), run_id, min(fetched_at)
        FROM (SELECT id, source, run_id, fetched_at, content_hash, payload,
                     substring(source_key FROM '^(.*):[0-9]+$') AS file_key,
                     substring(source_key FROM ':([0-9]+)$')::integer AS line_no
              FROM raw_records WHERE source = 'csv') AS lines
        GROUP BY source, file_key, run_id
        ORDER BY min(id)
    """)
    op.execute("DELETE FROM raw_records WHERE source = 'csv'")


def downgrade():
    op.execute("""
        INSERT INTO raw_records (source, source_key, content_hash, payload, run_id, fetched_at)
        SELECT source, source_key, content_hash, payload, run_id, fetched_at
        FROM raw_lines ORDER BY id
    """)
    op.execute("DROP VIEW raw_lines")
    op.drop_table('raw_line_blocks')
