"""Notify fixtures: a local webhook receiver, and the database with no notification state."""
from __future__ import annotations

from typing import Iterator

import pytest
from sqlalchemy import Engine, text

from tests.helpers.webhooks import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local webhook receiver."""
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def notify_db(clean_db: Engine) -> Engine:
    """clean_db plus this feature's tables emptied."""
    with clean_db.begin() as conn:
        conn.execute(text("TRUNCATE notifications, alert_states RESTART IDENTITY"))
    return clean_db
