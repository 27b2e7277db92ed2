"""The storage alert: told once when fewer than STORAGE_ALERT_DAYS are left before the budget."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.locks import NOTIFY_LOCK, lock_for_transaction
from shared.models import AlertState, Notification
from shared.notify.targets import configured_targets
from shared.storage.usage import storage_figures

# The pseudo-source of the storage alert in alert_states and notifications.
STORAGE = "storage"
LOW, OK = "low", "ok"


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_budget(session: Session, settings: Settings, now: datetime) -> list[int]:
    """Tell every configured target once when fewer than STORAGE_ALERT_DAYS are left (then a
    reminder each NOTIFY_REMINDER_SECONDS), and once when enough are again; the notification
    ids to send after commit. Deduplicated against alert_states' `storage` row, as sources."""
    lock_for_transaction(session, NOTIFY_LOCK)  # the evaluations of sources take it too
    figures = storage_figures(session, settings)
    left = figures["days_left"]
    state = LOW if left is not None and left < settings.storage_alert_days else OK
    kept = session.scalar(select(AlertState).where(AlertState.source == STORAGE))
    if kept is None:
        kept = AlertState(source=STORAGE, state=OK, since=now, escalated=False,
                          consecutive_failures=0)
        session.add(kept)
    event = None
    if state != kept.state:
        event = "storage_low" if state == LOW else "recovered"
        kept.state, kept.since = state, now
    elif state == LOW and (kept.last_notified_at is None or now - kept.last_notified_at
                           >= timedelta(seconds=settings.notify_reminder_seconds)):
        event = "reminder"
    kept.updated_at = now
    if event is None:
        return []
    kept.last_notified_at = now
    growth_text = (f", growing {_gib(figures['growth_bytes_per_day'])} a day"
                   if figures["growth_bytes_per_day"] else "")
    detail = (f"{left if left is not None else 'no'} days left: {_gib(figures['database_bytes'])}"
              f" of {_gib(settings.storage_budget_bytes)}{growth_text}")
    created = [Notification(source=STORAGE, event=event, state=state,
                            severity="warning" if state == LOW else "info", target=target,
                            status="pending", consecutive_failures=0, detail=detail,
                            attempts=0, created_at=now)
               for target in configured_targets(settings)]
    session.add_all(created)
    session.flush()
    return [n.id for n in created]
