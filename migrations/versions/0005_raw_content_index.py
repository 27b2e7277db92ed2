"""raw records: the content-hash unique index covers API records only

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 06:10:00.000000

Measured on a 1,000,000-line CSV (`make bench`, backend CPU time): COPY of the raw lines into
an unindexed heap 2.3 s; the unique btree on the random 32-byte content hash added 6.3 s, more
than twice a bare COPY of the whole file, because every insert lands on a random leaf page and
the index outgrows the buffer cache next to the other tables being loaded. CSV lines do not
need it: a line is read once because the file offset that covers it commits in the same
transaction, and a replaced file is re-read through staging with an anti-join on the stored
hashes (shared.ingest.batch_writer). API records (a few thousand per run, mostly repeats of the previous
run) keep the unique index and its ON CONFLICT DO NOTHING.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    op.drop_constraint('uq_raw_records_source', 'raw_records', type_='unique')
    op.create_index('uq_raw_records_api_content', 'raw_records', ['source', 'content_hash'],
                    unique=True, postgresql_where=sa.text("source <> 'csv'"))


def downgrade():
    op.drop_index('uq_raw_records_api_content', table_name='raw_records',
                  postgresql_where=sa.text("source <> 'csv'"))
    # Fails if a CSV line's text is stored twice, which the loader allows in one case only: a
    # rejected line that moved to another line number (its reject differs by location).
    op.create_unique_constraint('uq_raw_records_source', 'raw_records',
                                ['source', 'content_hash'])
