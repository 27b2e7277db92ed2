"""hourly and daily quote rollups for retention

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 19:40:00.000000

quotes_hourly and quotes_daily hold quotes folded past QUOTES_FULL_RESOLUTION_DAYS and
QUOTES_HOURLY_DAYS (shared.storage.retention): one row per asset, source and bucket with the
candles' OHLC convention. Both are range-partitioned on bucket_start, a year per partition
(made on demand by the fold, shared.storage.partitions), keyed like the quotes (asset_id
first). retention_horizons says where each resolution starts; rollup_folds marks a partition
folded and not yet dropped, so a run after a crash folds it again in place.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None

_ROLLUPS = ("quotes_hourly", "quotes_daily")


def _rollup(name: str) -> None:
    op.create_table(
        name,
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_asset_id", sa.String(length=300), nullable=True),
        sa.Column("open_usd", sa.Numeric(), nullable=True),
        sa.Column("high_usd", sa.Numeric(), nullable=True),
        sa.Column("low_usd", sa.Numeric(), nullable=True),
        sa.Column("close_usd", sa.Numeric(), nullable=True),
        sa.Column("volume_24h_usd", sa.Numeric(), nullable=True),
        sa.Column("market_cap_usd", sa.Numeric(), nullable=True),
        sa.Column("quotes", sa.Integer(), nullable=False),
        sa.Column("first_observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("asset_id", "source", "bucket_start", name=f"pk_{name}"),
        postgresql_partition_by="RANGE (bucket_start)",
    )


def upgrade() -> None:
    """The two rollup tables (no partition yet: the first fold makes its year's), horizons,
    fold markers."""
    for name in _ROLLUPS:
        _rollup(name)
    op.create_table(
        "retention_horizons",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("horizon", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_retention_horizons"),
    )
    op.create_table(
        "rollup_folds",
        sa.Column("relid", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("folded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("relid", name="pk_rollup_folds"),
    )


def downgrade() -> None:
    """Drop them (partitions go with their parent)."""
    op.drop_table("rollup_folds")
    op.drop_table("retention_horizons")
    for name in reversed(_ROLLUPS):
        op.drop_table(name)
