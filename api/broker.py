"""The API's sending-only Celery client and broker ping (no worker code imported)."""
from __future__ import annotations

from typing import Any

from celery import Celery
from celery.backends.redis import RedisBackend
from flask import Flask, current_app

from shared.celery_config import celery_config
from shared.config import Settings


class SendOnlyRedisBackend(RedisBackend):
    """Redis result backend that never subscribes to results of the tasks it sends.

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


def init_broker(app: Flask, settings: Settings) -> None:
    """Attach a Celery client configured like the workers, used only to send by task name."""
    client = Celery("kasparro-api", set_as_current=False)
    config = celery_config(settings)
    # chord() still needs a result backend to set up the header's counter.
    config["result_backend"] = f"{__name__}:SendOnlyRedisBackend+{settings.redis_url}"
    client.conf.update(config)
    app.extensions["celery"] = client


def get_celery() -> Celery:
    """The app's Celery client."""
    client: Celery = current_app.extensions["celery"]
    return client
