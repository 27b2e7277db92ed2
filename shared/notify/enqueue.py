"""Asking for an evaluation from a run's end: ids only, after commit, and never failing it."""
from __future__ import annotations

import logging
from typing import Any

from shared import redis_client, task_names

log = logging.getLogger(__name__)
BROKER_PROBE_SECONDS = 0.5


def request_evaluation(app: Any, run_id: int | None = None) -> bool:
    """Enqueue `notify.evaluate` (call after the run's commit); False, logged, when the broker
    refuses: a notification must never fail or hold up the ETL."""
    try:
        # kombu retries a refused connection for seconds whatever `retry` says: a quick ping
        # first, so a dead broker costs the run at most BROKER_PROBE_SECONDS.
        probe = redis_client.from_celery_conf(app.conf, socket_timeout=BROKER_PROBE_SECONDS,
                                              socket_connect_timeout=BROKER_PROBE_SECONDS)
        try:
            probe.ping()
        finally:
            probe.close()
        app.send_task(task_names.NOTIFY_EVALUATE, retry=False,
                      headers={"kasparro_run_id": run_id})
    except Exception as exc:  # noqa: BLE001 - whatever the broker does, the run goes on
        log.warning("notification evaluation not enqueued (run %s): %s", run_id,
                    type(exc).__name__)
        return False
    return True
