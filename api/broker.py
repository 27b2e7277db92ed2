"""The API's sending-only Celery client and broker ping (no worker code imported)."""
from __future__ import annotations

from celery import Celery
from flask import Flask, current_app

from shared.celery_config import celery_config
from shared.config import Settings


def init_broker(app: Flask, settings: Settings) -> None:
    """Attach a Celery client configured like the workers, used only to send by task name."""
    client = Celery("kasparro-api", set_as_current=False)
    client.conf.update(celery_config(settings))
    app.extensions["celery"] = client


def get_celery() -> Celery:
    """The app's Celery client."""
    client: Celery = current_app.extensions["celery"]
    return client
