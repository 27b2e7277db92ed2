"""anomalies.asset_id: the asset a data anomaly is about, derived from its key, indexed

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 10:00:00.000000

A data anomaly's key is `quote:<asset_id>:<observed_at>`; GET /anomalies?asset= filters on it
and joins assets for the names. A stored generated column derives it from the key, so every
writer (the ORM insert and the batch's one-statement insert) stays as it is and the rows stored
before this migration get it too. Adding a stored generated column rewrites the table under an
exclusive lock: anomalies is small (one row per flag kind and asset per batch). The index is
partial (run anomalies have no asset) and ends in id, the list's keyset order.
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

ASSET_ID_SQL = ("CASE WHEN key ~ '^quote:[0-9]{1,18}:' "
                "THEN split_part(key, ':', 2)::bigint END")


def upgrade():
    op.add_column("anomalies", sa.Column(
        "asset_id", sa.BigInteger(), sa.Computed(ASSET_ID_SQL, persisted=True), nullable=True))
    op.create_index("ix_anomalies_asset", "anomalies", ["asset_id", "id"],
                    postgresql_where=sa.text("asset_id IS NOT NULL"))


def downgrade():
    op.drop_index("ix_anomalies_asset", table_name="anomalies")
    op.drop_column("anomalies", "asset_id")
