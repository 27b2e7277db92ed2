"""notifications (every message sent or failed, per target) and alert_states (dedupe per source)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 17:10:00.000000

- alert_states holds, per source, the state last notified about (fresh / stale / failing),
  since when, whether the escalation went out, and when the last message did: the notifier
  sends on a change of state, then only a reminder after an interval.
- notifications records each message to each target, by the target's name (slack, webhook,
  apprise), never its URL, which is a secret: source, event, run/job ids, the short error,
  status (pending, sent, failed), attempts and the last sending error.
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "alert_states",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("escalated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("last_notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("source", name="pk_alert_states"),
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending','sent','failed')",
                           name=op.f("ck_notifications_status")),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
    )
    op.create_index("ix_notifications_created", "notifications", ["created_at"])
    op.create_index("ix_notifications_source_created", "notifications",
                    ["source", "created_at"])


def downgrade():
    op.drop_index("ix_notifications_source_created", table_name="notifications")
    op.drop_index("ix_notifications_created", table_name="notifications")
    op.drop_table("notifications")
    op.drop_table("alert_states")
