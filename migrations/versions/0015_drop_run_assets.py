"""drop run_assets: each batch publishes its own assets, nothing reads or writes the table

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 18:05:00.000000

Migration 0010 moved publishing into each batch's transaction and drained the table; it has
been empty and unused since.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade():
    op.drop_table('run_assets')


def downgrade():
    op.create_table(
        'run_assets',
        sa.Column('run_id', sa.BigInteger(), nullable=False),
        sa.Column('asset_id', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('run_id', 'asset_id', name=op.f('pk_run_assets')),
    )
