"""The notification record read back: newest messages and counts (/status, /stats, /metrics)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.errors import safe_error_text
from shared.models import Notification


def recent_notifications(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """The newest `limit` notifications, newest first (target names only, never URLs)."""
    rows = session.scalars(
        select(Notification).order_by(Notification.id.desc()).limit(limit)).all()
    return [{
        "id": n.id, "source": n.source, "event": n.event, "state": n.state,
        "severity": n.severity, "target": n.target, "status": n.status, "run_id": n.run_id,
        "job_id": n.job_id, "detail": safe_error_text(n.detail), "attempts": n.attempts,
        "error": n.error, "created_at": n.created_at, "sent_at": n.sent_at,
    } for n in rows]


def notification_counts(session: Session, since: datetime) -> dict[tuple[str, str], int]:
    """(target, status) -> notifications created since `since`."""
    rows = session.execute(
        select(Notification.target, Notification.status, func.count())
        .where(Notification.created_at >= since)
        .group_by(Notification.target, Notification.status)).all()
    return {(target, status): int(n) for target, status, n in rows}
