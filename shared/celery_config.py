"""Celery configuration shared by the worker and by the API's sending-only client."""
from __future__ import annotations

from typing import Any

from shared import redis_client, task_names
from shared.config import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings, each chosen on purpose (see docs/operations.md)."""
    # REDIS_URL as Celery reads it; for Sentinel, the master's name in both transport options.
    redis = redis_client.celery_options(settings)
    return {
        "broker_url": redis["broker_url"],
        "result_backend": redis["result_backend"],
        # JSON only: task arguments are ids, never pickled objects.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # Ack after the task body ran, and re-queue when the child process dies, so a
        # kill -9 mid-run means redelivery, not loss. Our own attempt cap (runs.attempts)
        # stops a task that kills its worker every time.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per child: a prefetched message would wait behind a long run.
        "worker_prefetch_multiplier": 1,
        # A child per enabled source plus one for normalize, ticks and the reaper: a run
        # that sleeps through retry backoff or a rate-limit wait holds its child, and must
        # not keep another source's ready run waiting for one (at most one run per source is
        # live at a time: the source lock). `celery worker -c N` overrides it.
        "worker_concurrency": len(settings.enabled_sources) + 1,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        # Above the hard limit, or Redis hands a still-running task to a second worker.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": settings.broker_restore_interval,
            "unacked_restore_throttle": settings.broker_restore_throttle,
            "global_keyprefix": settings.broker_key_prefix,
            **redis["transport_options"],
        },
        # Each result-backend call (the chord counter a job's send sets first) is retried
        # while Redis does not answer, 1 s apart: a restart or failover is waited out, and a
        # send with Redis down fails after that long (RESULT_BACKEND_MAX_RETRIES).
        "result_backend_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "retry_policy": {"max_retries": settings.result_backend_max_retries,
                             "interval_start": 0, "interval_step": 1, "interval_max": 1},
            **redis["transport_options"]},
        "broker_connection_retry_on_startup": True,
        "result_expires": 24 * 3600,
        "task_track_started": True,
        # Every queue declared (each with a direct exchange of its name, as Celery makes one
        # for a queue it meets): a worker without `-Q` consumes them all, one with `-Q` the
        # ones named (the Redis transport only polls queues it has declared).
        "task_queues": {name: {"exchange": name, "routing_key": name}
                        for name in task_names.queues()},
        "task_default_queue": task_names.DEFAULT_QUEUE,
        "task_routes": {name: {"queue": queue} for name, queue in task_names.routes().items()},
        "worker_hijack_root_logger": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "timezone": "UTC",
        "enable_utc": True,
    }
