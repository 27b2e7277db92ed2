"""Celery task and queue names: the only link between the API (sends) and the worker (runs)."""
from __future__ import annotations

from shared.config import SOURCES

EXTRACT_PREFIX = "etl.extract."
NORMALIZE = "etl.normalize"
SCHEDULE_TICK = "etl.schedule_tick"
REAP_STALE_RUNS = "etl.reap_stale_runs"
# Notifications (worker/notify_tasks.py): evaluate source states, send one message.
NOTIFY_EVALUATE = "notify.evaluate"
NOTIFY_SEND = "notify.send"
# Backfills (worker/backfill_tasks.py): run one backfill's chunks.
BACKFILL_RUN = "backfill.run"
# Storage upkeep (worker/tasks.py, shared.storage.partitions): time partitions made ahead.
MAINTAIN_PARTITIONS = "storage.maintain_partitions"


def extract(source: str) -> str:
    """The name of the extract task for `source`, e.g. `etl.extract.coingecko`."""
    return EXTRACT_PREFIX + source


# Queues: each source's extract on a queue of its own (a worker started with `-Q csv` where the
# CSV files are mounted is the only one that runs CSV runs), backfills and notifications on
# theirs so they never wait behind a scheduled run, and the rest (normalize, the chord
# callback; the beat tick; the reaper) on Celery's default queue. Routed by task name in
# shared.celery_config, so the API's sending-only client routes exactly like the workers.
DEFAULT_QUEUE = "celery"
BACKFILL_QUEUE = "backfill"
NOTIFY_QUEUE = "notify"


def queues() -> tuple[str, ...]:
    """Every queue, in the order a worker that runs everything lists them after `-Q`."""
    return (DEFAULT_QUEUE, *SOURCES, BACKFILL_QUEUE, NOTIFY_QUEUE)


def queue_of(task_name: str) -> str:
    """The queue a task is sent to (the default queue for anything not routed elsewhere)."""
    if task_name.startswith(EXTRACT_PREFIX) and task_name[len(EXTRACT_PREFIX):] in SOURCES:
        return task_name[len(EXTRACT_PREFIX):]
    if task_name == BACKFILL_RUN:
        return BACKFILL_QUEUE
    if task_name in (NOTIFY_EVALUATE, NOTIFY_SEND):
        return NOTIFY_QUEUE
    return DEFAULT_QUEUE


def routes() -> dict[str, str]:
    """Task name -> queue for every task sent off the default queue (Celery's task_routes)."""
    named = [extract(source) for source in SOURCES] + [BACKFILL_RUN, NOTIFY_EVALUATE, NOTIFY_SEND]
    return {name: queue_of(name) for name in named}
