"""runs.kind: a backfill's run names its real source and says it is a backfill

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-14 10:00:00.000000

A backfill's run was stored as source `<source>-backfill` (and its job's sources likewise), a
value that is no source, so that it stayed apart from the source's extract runs: the one
running run per source, the reaper's lock, freshness and the run anomaly rules. `kind`
(`extract` or `backfill`) keeps them apart instead: the one-running index becomes one running
run per source and kind. The existing rows are rewritten (`coingecko-backfill` becomes source
`coingecko`, kind `backfill`); the old index goes first so that a running backfill run and a
running extract run of the source never meet in it. The downgrade writes the old names back.
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

SUFFIX = "-backfill"
RUNNING = sa.text("status = 'running'")


def upgrade():
    op.drop_index("uq_runs_one_running_per_source", table_name="runs",
                  postgresql_where=RUNNING)
    op.add_column("runs", sa.Column("kind", sa.String(length=16), nullable=False,
                                    server_default="extract"))
    op.create_check_constraint(op.f("ck_runs_kind"), "runs", "kind IN ('extract','backfill')")
    op.execute(sa.text(
        "UPDATE runs SET kind = 'backfill', source = left(source, -length(:suffix)) "
        "WHERE right(source, length(:suffix)) = :suffix").bindparams(suffix=SUFFIX))
    op.execute(sa.text(
        "UPDATE jobs SET sources = ARRAY(SELECT CASE WHEN right(s, length(:suffix)) = :suffix "
        "THEN left(s, -length(:suffix)) ELSE s END FROM unnest(sources) AS s) "
        "WHERE trigger = 'backfill'").bindparams(suffix=SUFFIX))
    op.create_index("uq_runs_one_running_per_source_kind", "runs", ["source", "kind"],
                    unique=True, postgresql_where=RUNNING)


def downgrade():
    op.drop_index("uq_runs_one_running_per_source_kind", table_name="runs",
                  postgresql_where=RUNNING)
    op.execute(sa.text("UPDATE runs SET source = source || :suffix WHERE kind = 'backfill'")
               .bindparams(suffix=SUFFIX))
    op.execute(sa.text(
        "UPDATE jobs SET sources = ARRAY(SELECT s || :suffix FROM unnest(sources) AS s) "
        "WHERE trigger = 'backfill'").bindparams(suffix=SUFFIX))
    op.drop_constraint(op.f("ck_runs_kind"), "runs", type_="check")
    op.drop_column("runs", "kind")
    op.create_index("uq_runs_one_running_per_source", "runs", ["source"], unique=True,
                    postgresql_where=RUNNING)
