"""hourly and daily quote rollups for retention (issue 24)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 19:40:00.000000
"""
from __future__ import annotations

# revision identifiers, used by Alembic.
revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet: the schema change of this revision is being written."""


def downgrade() -> None:
    """Nothing yet."""
