"""bulk load: run_assets, no per-row foreign keys on quotes/raw_records, two indexes fewer

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 04:30:00.000000

Measured on a 1,000,000-line CSV (bench/, `make bench`): each foreign key on quotes or
raw_records costs about 6 s per million rows (one trigger query per row), more than the COPY
of the rows itself. The loader writes asset ids it read from asset_source_ids (which keeps
its foreign key) and the id of the run it executes, and nothing deletes assets or runs.
ix_raw_records_source_key and ix_quotes_run_id served no query (0.7 s per million quotes for
the latter). run_assets lets normalize publish the newest quote per asset without sorting
every quote of the job's runs.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'run_assets',
        sa.Column('run_id', sa.BigInteger(), nullable=False),
        sa.Column('asset_id', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_assets_run_id_runs'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('run_id', 'asset_id', name=op.f('pk_run_assets')),
    )
    # Runs of jobs not normalized yet wrote their quotes before this table existed.
    op.execute(
        "INSERT INTO run_assets (run_id, asset_id) "
        "SELECT DISTINCT q.run_id, q.asset_id FROM quotes q "
        "JOIN runs r ON r.id = q.run_id JOIN jobs j ON j.id = r.job_id "
        "WHERE j.status IN ('queued', 'running')"
    )
    op.drop_index('ix_raw_records_source_key', table_name='raw_records')
    op.drop_index('ix_quotes_run_id', table_name='quotes')
    op.drop_constraint('fk_raw_records_run_id_runs', 'raw_records', type_='foreignkey')
    op.drop_constraint('fk_quotes_run_id_runs', 'quotes', type_='foreignkey')
    op.drop_constraint('fk_quotes_asset_id_assets', 'quotes', type_='foreignkey')


def downgrade():
    op.create_foreign_key('fk_quotes_asset_id_assets', 'quotes', 'assets', ['asset_id'], ['id'])
    op.create_foreign_key('fk_quotes_run_id_runs', 'quotes', 'runs', ['run_id'], ['id'],
                          ondelete='SET NULL')
    op.create_foreign_key('fk_raw_records_run_id_runs', 'raw_records', 'runs', ['run_id'],
                          ['id'], ondelete='SET NULL')
    op.create_index('ix_quotes_run_id', 'quotes', ['run_id'], unique=False)
    op.create_index('ix_raw_records_source_key', 'raw_records', ['source', 'source_key'],
                    unique=False)
    op.drop_table('run_assets')
