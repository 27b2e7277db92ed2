"""notify.evaluate and notify.send in a real Celery worker: sent, and retried after a 500."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Callable

import pytest
from sqlalchemy import Engine, text

from shared import task_names
from shared.config import load_settings
from tests.helpers.broker import sender
from tests.helpers.runs import add_run
from tests.helpers.waiting import poll
from tests.helpers.webhooks import Receiver


# Starts real processes (a celery worker): not in the fast subset.
pytestmark = pytest.mark.processes


def _wait(engine: Engine, sql: str, expected: Any, timeout: float = 30) -> Any:
    def rows() -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())

    return poll(rows, lambda got: got == expected, timeout, f"{sql} == {expected}", 0.2)


def test_worker_sends_and_retries(notify_db: Engine, base_env: dict[str, str],
                                  receiver: Receiver,
                                  worker_factory: Callable[..., Any]) -> None:
    env = {"ETL_SOURCES": "csv", "ALERT_WEBHOOK_URL": receiver.url + "/hook",
           "NOTIFY_TIMEOUT_SECONDS": "2"}
    worker = worker_factory(env)
    settings = load_settings({**base_env, **env})
    run = add_run(notify_db, "csv", "failed", datetime.now(timezone.utc),
                  "csv: HTTP 500 from upstream")
    receiver.mode = "500"
    sender(settings).send_task(task_names.NOTIFY_EVALUATE)
    _wait(notify_db, "SELECT status, attempts, error FROM notifications",
          [("failed", 1, "HTTP 500")])
    receiver.mode = "ok"
    # The task retries after 5 s and gets through.
    _wait(notify_db, "SELECT status, attempts, error FROM notifications", [("sent", 2, None)])
    bodies = [body for _, body in receiver.take()]
    assert len(bodies) == 2 and bodies[-1]["run_id"] == run and bodies[-1]["event"] == "failed"
    # A second evaluation on the same failing state sends nothing new: once it has run (its
    # log line), it decided on no notification, none was added and the receiver got nothing.
    again = sender(settings).send_task(task_names.NOTIFY_EVALUATE)
    done = poll(worker.log_text, lambda log: f"[{again.id}] succeeded" in log, 30,
                "the second evaluation")
    assert re.search(rf"\[{again.id}\] succeeded in [0-9.e-]+s: \[\]", done), done[-2000:]
    _wait(notify_db, "SELECT count(*) FROM notifications", [(1,)], timeout=0)
    assert receiver.take() == []
    assert receiver.url not in worker.log_text()
