"""run_assets.run_id is no longer a foreign key to runs

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 23:50:00.000000

Each batch notes the assets it wrote in run_assets; an append of one day to a 1,000-coin file
notes 1,000 rows in its first batch, and the foreign key's check (a trigger and a key-share
lock on the run's row per inserted row) cost 10-11 of the 19 ms that insert took (EXPLAIN
ANALYZE). The rows are written only by the run's own loader, inside transactions that also
update that run's row, and are deleted once the job is published; runs are never deleted (the
cascade never fired). The same reasoning as migration 0003's for quotes and raw records.
"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    op.drop_constraint('fk_run_assets_run_id_runs', 'run_assets', type_='foreignkey')


def downgrade():
    op.create_foreign_key('fk_run_assets_run_id_runs', 'run_assets', 'runs', ['run_id'], ['id'],
                          ondelete='CASCADE')
