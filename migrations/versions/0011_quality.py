"""quality flags on quotes (sparse), run/data anomalies, current_quotes.quality

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 17:05:00.000000

- quote_flags holds a row only for a quote that some check in shared.quality.checks flagged, keyed
  like quotes, so clean ingest writes nothing extra. `flags` is the list of {flag, reason,
  evidence} the checks returned.
- anomalies holds each run or data anomaly once: (kind, source, key) is unique, where `key`
  names what the anomaly is about (a run id, a quote), so re-running the rules is idempotent.
- current_quotes.quality is NULL for a clean quote and the flags otherwise, so /data serves
  them without a join. Adding a nullable column without a default rewrites nothing.
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "quote_flags",
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("flags", JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("asset_id", "source", "observed_at", name="pk_quote_flags"),
    )
    op.create_table(
        "anomalies",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("evidence", JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_anomalies"),
        sa.UniqueConstraint("kind", "source", "key", name="uq_anomalies_kind"),
    )
    op.create_index("ix_anomalies_source_created", "anomalies", ["source", "created_at"])
    op.create_index("ix_anomalies_created", "anomalies", ["created_at"])
    op.add_column("current_quotes", sa.Column("quality", JSONB(), nullable=True))


def downgrade():
    op.drop_column("current_quotes", "quality")
    op.drop_index("ix_anomalies_created", table_name="anomalies")
    op.drop_index("ix_anomalies_source_created", table_name="anomalies")
    op.drop_table("anomalies")
    op.drop_table("quote_flags")
