"""Celery tasks for notifications: thin transport around shared.notify (retries, no ETL wait)."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from celery import Task, shared_task

from shared import task_names
from shared.config import get_settings
from shared.db import get_engine, unit_of_work
from shared.notify import evaluate, send_notification
from shared.notify.slot import SendSlot
from shared.notify.budget import check_budget
from shared.storage import usage

log = logging.getLogger(__name__)

SEND_MAX_RETRIES = 4
# Short limits: a hung receiver costs one worker slot this long at most.
SEND_SOFT_TIME_LIMIT = 30
SEND_TIME_LIMIT = 40
# A send that finds the slot taken comes back this much later (a delayed message, no child).
DEFER_SECONDS = 2


@shared_task(name=task_names.NOTIFY_EVALUATE, acks_late=True, ignore_result=True)
def notify_evaluate() -> list[int]:
    """Decide which notifications source states call for; enqueue each after commit."""
    settings = get_settings()
    with unit_of_work(get_engine()) as session:
        ids = evaluate(session, settings, datetime.now(timezone.utc))
    for notification_id in ids:
        notify_send.apply_async((notification_id,))
    return ids


@shared_task(bind=True, name=task_names.NOTIFY_SEND, acks_late=True, ignore_result=True,
             max_retries=SEND_MAX_RETRIES, soft_time_limit=SEND_SOFT_TIME_LIMIT,
             time_limit=SEND_TIME_LIMIT)
def notify_send(self: Task, notification_id: int, failures: int = 0) -> str:
    """Send one notification in the cluster's one send slot (shared.notify.slot); retry with
    backoff while the target fails transiently (`failures`: attempts that failed so far)."""
    settings = get_settings()
    slot = SendSlot(settings, expire_seconds=SEND_TIME_LIMIT)
    if not slot.acquire():
        slot.release()
        self.apply_async((notification_id,), {"failures": failures}, countdown=DEFER_SECONDS)
        return "deferred"
    try:
        result = send_notification(get_engine(), int(notification_id), settings)
    finally:
        slot.release()
    if result.retry and failures < SEND_MAX_RETRIES:
        # 5 s, 10 s, 20 s, 40 s: the row says `failed` meanwhile, `sent` once through.
        self.apply_async((notification_id,), {"failures": failures + 1},
                         countdown=5 * 2 ** failures)
    return result.status


def storage_upkeep() -> list[int]:
    """Fold the kept counts, sample the database's size and tell the targets when the disk
    budget is near (shared.storage.usage); each notification sent after commit."""
    now = datetime.now(timezone.utc)
    with unit_of_work(get_engine()) as session:
        usage.maintain(session, now)
        ids = check_budget(session, get_settings(), now)
    for notification_id in ids:
        notify_send.apply_async((notification_id,))
    return ids
