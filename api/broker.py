"""The API's sending-only Celery client, and what it asks the broker: workers, queue depths."""
from __future__ import annotations

import time
from typing import Any, Callable, TypeVar, cast

from celery import Celery
from celery.backends.redis import RedisBackend, SentinelBackend
from flask import Flask, current_app

from shared import redis_client, task_names
from shared.celery_config import celery_config
from shared.config import Settings

T = TypeVar("T")


class _SendOnly:
    """A Redis result backend that never subscribes to results of the tasks it sends.

    The stock backend subscribes (pub/sub) to every task id a process sends so that it could
    wait for the result; the API never waits, so each gunicorn worker would only pile up
    subscriptions and reconnect noise.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Send without subscribing."""

    def add_pending_result(self, result: Any, weak: bool = False,
                           start_drainer: bool = True) -> Any:
        """Track nothing: nobody here waits for results."""
        return result

    def on_result_fulfilled(self, result: Any) -> None:
        """Nothing was subscribed, so there is nothing to cancel."""


class SendOnlyRedisBackend(_SendOnly, RedisBackend):
    """The send-only backend on one Redis server."""


class SendOnlySentinelBackend(_SendOnly, SentinelBackend):
    """The send-only backend on the master that Redis Sentinels name (REDIS_URL sentinel://)."""


def init_broker(app: Flask, settings: Settings) -> None:
    """Attach a Celery client configured like the workers, used only to send by task name."""
    client = Celery("kasparro-api", set_as_current=False)
    config = celery_config(settings)
    # chord() still needs a result backend to set up the header's counter.
    backend = ("SendOnlySentinelBackend" if redis_client.target(settings).is_sentinel
               else "SendOnlyRedisBackend")
    config["result_backend"] = f"{__name__}:{backend}+{config['result_backend']}"
    client.conf.update(config)
    app.extensions["celery"] = client


def get_celery() -> Celery:
    """The app's Celery client."""
    client: Celery = current_app.extensions["celery"]
    return client


def check_workers() -> dict[str, Any]:
    """Workers that answer a broadcast ping; cached briefly so probes do not flood the broker."""
    cache = current_app.extensions.setdefault("health_workers_cache", {})
    ttl = float(current_app.config["HEALTH_WORKERS_CACHE_SECONDS"])
    if cache and time.monotonic() - cache["at"] < ttl:
        return dict(cache["result"])
    timeout = float(current_app.config["HEALTH_WORKER_PING_TIMEOUT"])
    replies = get_celery().control.ping(timeout=timeout) or []
    names = sorted(name for reply in replies for name in reply)
    result = {"ok": bool(names), "count": len(names), "names": names}
    if not names:
        result["error"] = "no worker answered the ping"
    cache.update(at=time.monotonic(), result=result)
    return dict(result)


def queue_depths() -> dict[str, int]:
    """Messages waiting per broker queue (Redis lists), plus delivered but unacked ones."""
    settings = current_app.config["SETTINGS"]
    client = redis_client.client(settings, socket_timeout=1, socket_connect_timeout=1)
    prefix = settings.broker_key_prefix
    # redis-py types its sync and asyncio clients alike (int | Awaitable[int]); this is sync.
    try:
        depths = {queue: cast(int, client.llen(prefix + queue)) for queue in task_names.queues()}
        return {**depths, "unacked": cast(int, client.hlen(prefix + "unacked"))}
    finally:
        client.close()


def guarded(probe: Callable[[], T], default: T) -> T:
    """probe(), or `default` when it fails: a page or a scrape still shows what the database
    knows when the broker (Redis) is down."""
    try:
        return probe()
    except Exception:  # noqa: BLE001 - any broker failure leaves that part out
        return default
