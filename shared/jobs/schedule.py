"""Beat's ticks: one job per schedule entry and tick time, however many beats send the tick."""
from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy.orm import Session

from shared.jobs.submit import CreatedJob, submit_job

log = logging.getLogger(__name__)

# The beat schedule entry of the incremental ETL (worker/factory.py): part of each tick's key.
ETL_ENTRY = "incremental-etl"


def tick_time(interval_seconds: float, now: float | None = None) -> str:
    """The scheduled time of the tick due at `now` (Unix seconds; default the clock): the start
    of the interval holding it, intervals counted from the Unix epoch, as ISO 8601 UTC.

    Every beat ticks on those same boundaries (worker/beat_schedule.py), so every beat names a
    tick alike, whenever each was started.
    """
    at = time.time() if now is None else now
    start = math.floor(at / interval_seconds) * interval_seconds
    return datetime.fromtimestamp(start, timezone.utc).isoformat()


def tick_key(entry: str, scheduled_at: str) -> str:
    """The job's idempotency key for one tick of one schedule entry."""
    return f"beat:{entry}:{scheduled_at}"


def submit_tick_job(session: Session, celery_app: Any, sources: Sequence[str],
                    scheduled_at: str, entry: str = ETL_ENTRY) -> CreatedJob:
    """Submit the job of the tick of `entry` scheduled at `scheduled_at` (shared.jobs.submit).

    The tick's key is the job's idempotency key, unique in PostgreSQL: of the messages two
    beats (a rollout's overlap, a second one started by mistake) send for one tick, the first
    creates and sends the job and the others find it and send nothing (created False).
    """
    created = submit_job(session, celery_app, sources, trigger="beat",
                         idempotency_key=tick_key(entry, scheduled_at))
    # One line per tick message: what two beats did with one tick can be read from the log.
    log.info("tick %s %s: job %s %s", entry, scheduled_at, created.job.id,
             "created" if created.created else "already created")
    return created
