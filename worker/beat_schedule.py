"""Beat's schedule of the ETL: ticks on epoch-aligned boundaries, each naming its time."""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from celery.beat import BeatLazyFunc
from celery.schedules import schedstate, schedule

from shared import task_names
from shared.jobs.schedule import tick_time


class AlignedInterval(schedule):
    """Every `run_every` seconds, on multiples of it since the Unix epoch.

    Celery's plain interval counts from each beat's start, so two beats would tick at
    different instants and name different ticks; on shared boundaries both send the same
    tick, which shared.jobs.schedule turns into one job.
    """

    def _next_boundary(self, after: float) -> float:
        period = float(self.run_every.total_seconds())
        return (math.floor(after / period) + 1) * period

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """Time from now until the first boundary after `last_run_at`."""
        last = self.maybe_make_aware(last_run_at).timestamp()
        return timedelta(seconds=self._next_boundary(last) - self.now().timestamp())

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Due once the first boundary after `last_run_at` has passed; next: the one after."""
        now = self.now().timestamp()
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        if remaining <= 0:
            return schedstate(is_due=True, next=self._next_boundary(now) - now)
        return schedstate(is_due=False, next=remaining)


def etl_entry(interval_seconds: float) -> dict[str, Any]:
    """The beat_schedule entry of the incremental ETL: its tick task, with the tick's time
    computed by beat when it sends it (BeatLazyFunc), not when a worker runs it."""
    return {
        "task": task_names.SCHEDULE_TICK,
        "schedule": AlignedInterval(timedelta(seconds=interval_seconds)),
        "kwargs": {"scheduled_at": BeatLazyFunc(tick_time, interval_seconds)},
    }
