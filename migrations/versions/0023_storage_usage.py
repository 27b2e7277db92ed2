"""layer counters and storage samples for flat-cost stats (issue 24)

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 19:40:00.000000
"""
from __future__ import annotations

# revision identifiers, used by Alembic.
revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet: the schema change of this revision is being written."""


def downgrade() -> None:
    """Nothing yet."""
