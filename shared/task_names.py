"""Celery task names: the only link between the API (which sends) and the worker (which runs)."""
from __future__ import annotations

EXTRACT_PREFIX = "etl.extract."
NORMALIZE = "etl.normalize"
SCHEDULE_TICK = "etl.schedule_tick"
REAP_STALE_RUNS = "etl.reap_stale_runs"
# Notifications (worker/notify_tasks.py): evaluate source states, send one message.
NOTIFY_EVALUATE = "notify.evaluate"
NOTIFY_SEND = "notify.send"
# Backfills (worker/backfill_tasks.py): run one backfill's chunks.
BACKFILL_RUN = "backfill.run"


def extract(source: str) -> str:
    """The name of the extract task for `source`, e.g. `etl.extract.coingecko`."""
    return EXTRACT_PREFIX + source
