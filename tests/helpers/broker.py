"""Sending tasks by name from a test, on the broker the settings name (as the API does)."""
from __future__ import annotations

from celery import Celery

from shared.celery_config import celery_config
from shared.config import Settings


def sender(settings: Settings) -> Celery:
    """A Celery app configured like the project's, used only to send tasks."""
    app = Celery("test-sender")
    app.conf.update(celery_config(settings))
    return app
