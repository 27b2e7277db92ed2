"""shared.notify against a real HTTP receiver: dedupe, reminder, recovery, escalation, failures."""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, text

from shared import task_names
from shared.config import Settings, load_settings
from shared.db import unit_of_work
from shared.notify import evaluate, send_notification
from tests.conftest import queued_messages
from tests.helpers.broker import sender
from tests.helpers.runs import add_run
from tests.helpers.webhooks import Receiver

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)


def _settings(base_env: dict[str, str], receiver: Receiver, **env: str) -> Settings:
    return load_settings({**base_env, "ETL_SOURCES": "csv",
                          "SLACK_WEBHOOK_URL": receiver.url + "/slack/T000/SECRET",
                          "ALERT_WEBHOOK_URL": receiver.url + "/hook?token=SECRET",
                          "NOTIFY_REMINDER_SECONDS": "600", "NOTIFY_ESCALATE_AFTER": "3",
                          **env})


def tick(engine: Engine, settings: Settings, now: datetime, receiver: Receiver
         ) -> list[tuple[str, dict[str, Any]]]:
    """One evaluation, its sends, and what the receiver got."""
    with unit_of_work(engine) as session:
        ids = evaluate(session, settings, now)
    for notification_id in ids:
        assert send_notification(engine, notification_id, settings).status == "sent"
    return receiver.take()


def _events(got: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The webhook events received (the Slack copy is checked separately)."""
    return [body["event"] for path, body in got if path.startswith("/hook")]


def test_once_on_failure_then_reminder_escalation_and_recovery(
        notify_db: Engine, base_env: dict[str, str], receiver: Receiver,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _settings(base_env, receiver)
    add_run(notify_db, "csv", "succeeded", T0)
    assert tick(notify_db, settings, T0, receiver) == []  # fresh, first seen: nothing

    run = add_run(notify_db, "csv", "failed", T0 + MIN, "csv: HTTP 500 from upstream")
    got = tick(notify_db, settings, T0 + MIN, receiver)
    assert sorted(path.split("/")[1].split("?")[0] for path, _ in got) == ["hook", "slack"]
    hook = next(body for path, body in got if path.startswith("/hook"))
    job = notify_db.connect().execute(text("SELECT job_id FROM runs WHERE id = :i"),
                                      {"i": run}).scalar_one()
    assert hook == {**hook, "source": "csv", "event": "failed", "state": "failing",
                    "run_id": run, "job_id": job, "error": "csv: HTTP 500 from upstream",
                    "consecutive_failures": 1, "severity": "warning"}
    slack = next(body for path, body in got if path.startswith("/slack"))
    assert slack["text"] == "csv failed: csv: HTTP 500 from upstream"
    assert slack["blocks"][0]["type"] == "section" and "csv failed" in \
        slack["blocks"][0]["text"]["text"]

    # The next failing tick, and the one after: nothing new.
    add_run(notify_db, "csv", "failed", T0 + 2 * MIN, "csv: HTTP 500 from upstream")
    assert tick(notify_db, settings, T0 + 2 * MIN, receiver) == []
    assert tick(notify_db, settings, T0 + 5 * MIN, receiver) == []
    # The third failure in a row escalates, once.
    add_run(notify_db, "csv", "partial", T0 + 6 * MIN, "csv: HTTP 500 from upstream")
    got = tick(notify_db, settings, T0 + 6 * MIN, receiver)
    assert _events(got) == ["escalated"]
    [escalated] = [body for path, body in got if path.startswith("/hook")]
    assert escalated["severity"] == "critical" and escalated["consecutive_failures"] == 3
    assert "keeps failing (3 in a row)" in \
        next(body for path, body in got if path.startswith("/slack"))["text"]
    assert tick(notify_db, settings, T0 + 7 * MIN, receiver) == []
    # A reminder once the interval (600 s) has passed since the last message.
    assert tick(notify_db, settings, T0 + 15 * MIN, receiver) == []
    assert _events(tick(notify_db, settings, T0 + 16 * MIN, receiver)) == ["reminder"]
    assert tick(notify_db, settings, T0 + 17 * MIN, receiver) == []
    # Recovery: one message, then quiet.
    add_run(notify_db, "csv", "succeeded", T0 + 20 * MIN)
    assert _events(tick(notify_db, settings, T0 + 20 * MIN, receiver)) == ["recovered"]
    assert tick(notify_db, settings, T0 + 21 * MIN, receiver) == []

    with notify_db.connect() as conn:
        rows = conn.execute(text(
            "SELECT event, target, status, attempts FROM notifications ORDER BY id")).all()
        dump = json.dumps([list(r) for r in conn.execute(text(
            "SELECT * FROM notifications UNION ALL SELECT NULL, source, state, NULL, NULL, "
            "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM alert_states"
        )).all()], default=str)
    assert [(e, t) for e, t, _, _ in rows] == [
        (e, t) for e in ("failed", "escalated", "reminder", "recovered")
        for t in ("slack", "webhook")]
    assert all(status == "sent" and attempts == 1 for _, _, status, attempts in rows)
    # Targets are stored by name; their URLs (secrets) appear in no row and no log line.
    assert "SECRET" not in dump and receiver.url not in dump
    assert "SECRET" not in caplog.text and receiver.url not in caplog.text


def test_stale_then_recovered(notify_db: Engine, base_env: dict[str, str],
                              receiver: Receiver) -> None:
    settings = _settings(base_env, receiver, FRESHNESS_CSV_SECONDS="600",
                         SLACK_WEBHOOK_URL="")
    add_run(notify_db, "csv", "succeeded", T0)
    assert tick(notify_db, settings, T0 + MIN, receiver) == []
    got = tick(notify_db, settings, T0 + 11 * MIN, receiver)
    assert _events(got) == ["stale"]
    assert got[0][1]["error"] == "last success 660 s ago (objective 600 s)"
    assert tick(notify_db, settings, T0 + 12 * MIN, receiver) == []
    add_run(notify_db, "csv", "succeeded", T0 + 13 * MIN)
    assert _events(tick(notify_db, settings, T0 + 13 * MIN, receiver)) == ["recovered"]


def test_escalates_at_once_when_threshold_is_one(notify_db: Engine, base_env: dict[str, str],
                                                 receiver: Receiver) -> None:
    settings = _settings(base_env, receiver, NOTIFY_ESCALATE_AFTER="1", SLACK_WEBHOOK_URL="")
    add_run(notify_db, "csv", "partial", T0, "csv: 3 of 9 batches failed")
    got = tick(notify_db, settings, T0, receiver)
    assert [(b["event"], b["severity"]) for _, b in got] == [("partial", "critical")]
    add_run(notify_db, "csv", "failed", T0 + MIN, "csv: HTTP 500 from upstream")
    assert tick(notify_db, settings, T0 + MIN, receiver) == []


def test_failing_receivers_never_delay_the_evaluation(
        notify_db: Engine, base_env: dict[str, str], receiver: Receiver, redis_url: str,
        record_property: Any) -> None:
    """500 and a hang are recorded as failed (retry wanted); what a run's end pays, the
    evaluation and the enqueue, does not touch the receiver at all."""
    settings = _settings(base_env, receiver, NOTIFY_TIMEOUT_SECONDS="0.5")
    add_run(notify_db, "csv", "succeeded", T0)
    add_run(notify_db, "csv", "failed", T0 + MIN, "csv: HTTP 500 from upstream")
    receiver.mode = "hang"
    broker = sender(settings)
    started = time.perf_counter()
    with unit_of_work(notify_db) as session:
        ids = evaluate(session, settings, T0 + MIN)
    evaluated = time.perf_counter()
    for notification_id in ids:
        broker.send_task(task_names.NOTIFY_SEND, args=[notification_id])
    enqueued = time.perf_counter()
    assert len(ids) == 2 and queued_messages(redis_url, "notify") == 2
    evaluate_ms, enqueue_ms = (evaluated - started) * 1000, (enqueued - evaluated) * 1000
    record_property("evaluate_ms", round(evaluate_ms, 1))
    record_property("enqueue_ms", round(enqueue_ms, 1))
    print(f"evaluate {evaluate_ms:.1f} ms, enqueue {enqueue_ms:.1f} ms (receiver hanging)")
    # Deciding and enqueueing never touch a receiver: only the send task does (measured above).
    assert receiver.take() == []

    # The send itself gives up after the short timeout and says a retry may help.
    started = time.perf_counter()
    result = send_notification(notify_db, ids[0], settings)
    hung_s = time.perf_counter() - started
    print(f"send to a hanging receiver gave up after {hung_s:.2f} s")
    assert result.status == "failed" and result.retry and result.error == "ReadTimeout"
    assert hung_s < 2.0
    receiver.mode = "500"
    result = send_notification(notify_db, ids[1], settings)
    assert (result.status, result.retry, result.error) == ("failed", True, "HTTP 500")
    # A retry that gets through marks the row sent.
    receiver.mode = "ok"
    assert send_notification(notify_db, ids[1], settings).status == "sent"
    assert send_notification(notify_db, ids[1], settings).status == "sent"  # redelivered
    with notify_db.connect() as conn:
        rows = conn.execute(text(
            "SELECT status, attempts, error FROM notifications ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [("failed", 1, "ReadTimeout"), ("sent", 2, None)]


def test_unreachable_target_error_names_no_url(notify_db: Engine, base_env: dict[str, str],
                                               receiver: Receiver) -> None:
    settings = _settings(base_env, receiver, SLACK_WEBHOOK_URL="",
                         ALERT_WEBHOOK_URL="http://user:SECRET@127.0.0.1:1/hook")
    add_run(notify_db, "csv", "failed", T0, "csv: HTTP 500 from upstream")
    with unit_of_work(notify_db) as session:
        [notification_id] = evaluate(session, settings, T0)
    result = send_notification(notify_db, notification_id, settings)
    assert result.status == "failed" and result.error == "ConnectionError"
    assert "SECRET" not in repr(settings)


def test_webhook_urls_and_their_paths_are_redacted(base_env: dict[str, str]) -> None:
    from shared.logging_setup import redact

    settings = load_settings({**base_env, "SLACK_WEBHOOK_URL":
                              "https://hooks.slack.com/services/T0/B0/abcdefgh"})
    line = 'POST /services/T0/B0/abcdefgh 200; to https://hooks.slack.com/services/T0/B0/abcdefgh'
    scrubbed = redact(line, settings)
    assert "abcdefgh" not in scrubbed and "POST" in scrubbed


def test_apprise_target(notify_db: Engine, base_env: dict[str, str], receiver: Receiver,
                        caplog: pytest.LogCaptureFixture) -> None:
    """APPRISE_URLS reaches further services; here apprise's JSON plugin, to the receiver."""
    caplog.set_level(logging.DEBUG)
    port = receiver.url.rsplit(":", 1)[1]
    settings = _settings(base_env, receiver, SLACK_WEBHOOK_URL="", ALERT_WEBHOOK_URL="",
                         APPRISE_URLS=f"json://127.0.0.1:{port}/apprise/SECRET")
    add_run(notify_db, "csv", "failed", T0, "csv: HTTP 500 from upstream")
    got = tick(notify_db, settings, T0, receiver)
    assert [path for path, _ in got] == ["/apprise/SECRET"]
    body = got[0][1]
    assert body["title"] == "Kasparro: csv failed"
    assert body["message"].startswith("csv: HTTP 500 from upstream")
    assert "SECRET" not in caplog.text
    with notify_db.connect() as conn:
        assert conn.execute(text("SELECT target, status FROM notifications")).all() == \
            [("apprise", "sent")]
    receiver.mode = "500"
    add_run(notify_db, "csv", "succeeded", T0 + MIN)
    with unit_of_work(notify_db) as session:
        [notification_id] = evaluate(session, settings, T0 + MIN)
    result = send_notification(notify_db, notification_id, settings)
    assert (result.status, result.error) == ("failed", "apprise: not delivered")


def test_a_new_source_gets_one_objective_of_grace(notify_db: Engine, base_env: dict[str, str],
                                                  receiver: Receiver) -> None:
    """Never succeeded: quiet for one objective after first seen (a new stack), then stale."""
    settings = _settings(base_env, receiver, FRESHNESS_CSV_SECONDS="600", SLACK_WEBHOOK_URL="")
    assert tick(notify_db, settings, T0, receiver) == []
    assert tick(notify_db, settings, T0 + 10 * MIN, receiver) == []
    got = tick(notify_db, settings, T0 + 11 * MIN, receiver)
    assert _events(got) == ["stale"] and got[0][1]["error"] == \
        "no success yet (objective 600 s)"
    assert tick(notify_db, settings, T0 + 12 * MIN, receiver) == []


def test_history_and_metrics_show_sent_and_failed(notify_db: Engine, base_env: dict[str, str],
                                                  receiver: Receiver) -> None:
    from sqlalchemy.orm import Session

    from api import create_app
    from shared.notify import notification_counts, recent_notifications

    settings = _settings(base_env, receiver)
    add_run(notify_db, "csv", "failed", T0, "csv: HTTP 500 from upstream")
    with unit_of_work(notify_db) as session:
        slack_id, hook_id = evaluate(session, settings, T0)
    send_notification(notify_db, slack_id, settings)
    receiver.mode = "500"
    send_notification(notify_db, hook_id, settings)
    with Session(notify_db) as session:
        recent = recent_notifications(session, limit=10)
        counts = notification_counts(session, T0 - MIN)
    assert [(n["target"], n["status"], n["error"]) for n in recent] == [
        ("webhook", "failed", "HTTP 500"), ("slack", "sent", None)]
    assert recent[0]["detail"] == "csv: HTTP 500 from upstream" and recent[0]["run_id"]
    assert counts == {("slack", "sent"): 1, ("webhook", "failed"): 1}
    with notify_db.begin() as conn:  # the metric counts the last 24 h of real time
        conn.execute(text("UPDATE notifications SET created_at = now()"))
    client = create_app({"TESTING": True, "HEALTH_WORKER_PING_TIMEOUT": 0.1},
                        settings=settings).test_client()
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'kasparro_notifications_24h{status="failed",target="webhook"} 1.0' in metrics
    assert 'kasparro_notifications_24h{status="sent",target="slack"} 1.0' in metrics


def test_request_evaluation_never_raises_nor_hangs_with_the_broker_down(
        notify_db: Engine, base_env: dict[str, str], redis_url: str) -> None:
    from shared.notify.enqueue import request_evaluation

    settings = load_settings(base_env)
    started = time.perf_counter()
    assert request_evaluation(sender(settings), run_id=7) is True
    ok_ms = (time.perf_counter() - started) * 1000
    assert queued_messages(redis_url, "notify") == 1
    dead = load_settings({**base_env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    started = time.perf_counter()
    assert request_evaluation(sender(dead), run_id=7) is False
    dead_ms = (time.perf_counter() - started) * 1000
    print(f"request_evaluation: {ok_ms:.1f} ms, broker down {dead_ms:.1f} ms")
    # A liveness bound, not a speed target: without the short ping, kombu's connection retries
    # kept a broker-down call busy for 6-19 s.
    assert dead_ms < 5000
