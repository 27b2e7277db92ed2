"""backfills and backfill_chunks: resumable historical loads, one chunk per (coin, time window)

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-06 17:50:00.000000

- backfills: one per distinct request (request_key, a hash of the normalized request, is
  unique: the same request returns the same backfill), with its job and run (quotes carry the
  run id like any run's), the coins as [{id, symbol, name}], the time range and status.
- backfill_chunks: one upstream request each; status pending/running/done/failed with its
  counts. A chunk turns done in the same transaction that writes its quotes, raw payload and
  checkpoint, so a killed worker leaves it pending or running, never half written.
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

# revision identifiers, used by Alembic.
revision = '0014'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the two tables."""
    op.create_table(
        'backfills',
        sa.Column('id', sa.BigInteger, primary_key=True),
        sa.Column('request_key', sa.String(64), nullable=False),
        sa.Column('source', sa.String(32), nullable=False),
        sa.Column('job_id', sa.BigInteger,
                  sa.ForeignKey('jobs.id', ondelete='CASCADE'), nullable=False),
        sa.Column('run_id', sa.BigInteger, nullable=False),
        sa.Column('assets', JSONB, nullable=False),
        sa.Column('since', sa.DateTime(timezone=True), nullable=False),
        sa.Column('until', sa.DateTime(timezone=True), nullable=False),
        sa.Column('chunk_days', sa.Integer, nullable=False),
        sa.Column('status', sa.String(16), nullable=False, server_default='queued'),
        sa.Column('error', sa.Text),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column('started_at', sa.DateTime(timezone=True)),
        sa.Column('finished_at', sa.DateTime(timezone=True)),
        sa.UniqueConstraint('request_key', name='uq_backfills_request_key'),
    )
    op.create_index('ix_backfills_created_at', 'backfills', ['created_at'])
    op.create_table(
        'backfill_chunks',
        sa.Column('id', sa.BigInteger, primary_key=True),
        sa.Column('backfill_id', sa.BigInteger,
                  sa.ForeignKey('backfills.id', ondelete='CASCADE'), nullable=False),
        sa.Column('coin_id', sa.String(300), nullable=False),
        sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
        sa.Column('window_end', sa.DateTime(timezone=True), nullable=False),
        sa.Column('granularity_seconds', sa.Integer, nullable=False),
        sa.Column('status', sa.String(16), nullable=False, server_default='pending'),
        sa.Column('attempts', sa.Integer, nullable=False, server_default='0'),
        sa.Column('points', sa.Integer, nullable=False, server_default='0'),
        sa.Column('inserted', sa.Integer, nullable=False, server_default='0'),
        sa.Column('error', sa.Text),
        sa.Column('started_at', sa.DateTime(timezone=True)),
        sa.Column('finished_at', sa.DateTime(timezone=True)),
        sa.UniqueConstraint('backfill_id', 'coin_id', 'window_start',
                            name='uq_backfill_chunks_window'),
    )


def downgrade() -> None:
    """Drop the two tables."""
    op.drop_table('backfill_chunks')
    op.drop_table('backfills')
