"""Builds the worker's Celery app: config, beat schedule, per-process database engine."""
from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import beat_init, worker_init, worker_process_init, worker_process_shutdown

from shared import task_names
from shared.celery_config import celery_config
from shared.config import get_settings
from shared.db import dispose_engine
from shared.jobs.schedule import ETL_ENTRY, tick_time
from shared.logging_setup import configure_logging
from shared.db import SessionPoolingRequired, require_session_pooling
from shared.storage.partitions import MAINTENANCE_SECONDS
from worker.beat_schedule import etl_entry


def create_celery_app() -> Celery:
    """The worker-side Celery app with its tasks and beat schedule registered."""
    settings = get_settings()
    configure_logging(settings)
    app = Celery("kasparro",
                 include=["worker.tasks", "worker.notify_tasks", "worker.backfill_tasks"])
    app.conf.update(celery_config(settings))
    app.conf.beat_schedule = {
        # One job per tick even if a second beat runs (shared.jobs.schedule).
        ETL_ENTRY: etl_entry(settings.etl_schedule_seconds),
        "reap-stale-runs": {
            "task": task_names.REAP_STALE_RUNS,
            "schedule": float(settings.reaper_interval_seconds),
        },
        # Partitions exist before the rows that need them (shared.storage.partitions).
        "maintain-partitions": {
            "task": task_names.MAINTAIN_PARTITIONS,
            "schedule": MAINTENANCE_SECONDS,
        },
        # Staleness comes with time, not with a run's end: beat looks for it.
        "notify-evaluate": {
            "task": task_names.NOTIFY_EVALUATE,
            "schedule": float(settings.notify_evaluate_seconds),
        },
    }
    return app


@worker_init.connect
def _refuse_a_pool_without_sessions(**_: Any) -> None:
    # The runs' session advisory locks need a server session per connection (shared.db):
    # a transaction pool stops the worker here, before it takes a task. SystemExit, because
    # Celery logs and goes past any Exception a signal handler raises.
    try:
        require_session_pooling(get_settings().database_url, "the worker")
    except SessionPoolingRequired as exc:
        logging.getLogger(__name__).critical("%s", exc)
        raise SystemExit(str(exc)) from None


@worker_process_init.connect
def _fresh_engine_after_fork(**_: Any) -> None:
    # A pool inherited across fork() shares sockets with the parent: start clean.
    dispose_engine()


@worker_process_shutdown.connect
def _close_engine(**_: Any) -> None:
    dispose_engine()


@beat_init.connect
def _tick_at_start(sender: Any, **_: Any) -> None:
    # A fresh stack fills itself right away instead of after the first interval. The tick is
    # the current interval's: a beat (re)started after it was done, or a second beat, adds
    # no job.
    interval = get_settings().etl_schedule_seconds
    sender.app.send_task(task_names.SCHEDULE_TICK,
                         kwargs={"scheduled_at": tick_time(interval)})
