"""Celery task of backfills: thin transport around shared.backfill.run."""
from __future__ import annotations

import logging

from celery import Task, shared_task

from shared import task_names
from shared.backfill.run import execute_backfill
from shared.config import get_settings
from shared.db import get_engine

log = logging.getLogger(__name__)

# How long a backfill waits for another backfill of its source before asking again.
WAIT_SECONDS = 10


@shared_task(bind=True, name=task_names.BACKFILL_RUN, acks_late=True,
             reject_on_worker_lost=True, ignore_result=True)
def backfill_run(self: Task, backfill_id: int) -> str:
    """Run a backfill's chunks; past a budget under the time limit, send itself again."""
    settings = get_settings()
    budget = max(1.0, settings.task_soft_time_limit * 0.8)
    status = execute_backfill(int(backfill_id), settings, get_engine(), budget)
    if status == "more":
        # A new message, not a retry: a long backfill is many short tasks, each resumable.
        self.app.send_task(task_names.BACKFILL_RUN, args=(backfill_id,))
    elif status == "wait":
        # Another backfill of the source runs: come back later as a delayed message.
        self.app.send_task(task_names.BACKFILL_RUN, args=(backfill_id,),
                           countdown=WAIT_SECONDS)
    return status
