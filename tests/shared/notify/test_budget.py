"""The storage alert against a real HTTP receiver: told once when the days left before the
disk budget fall under STORAGE_ALERT_DAYS, reminded, told of the recovery; the figures."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, text

from shared.config import Settings, load_settings
from shared.db import unit_of_work
from shared.notify import send_notification
from shared.notify.budget import check_budget
from shared.storage import usage
from tests.helpers.webhooks import Receiver

GIB = 2**30
HOUR = timedelta(hours=1)


def _settings(base_env: dict[str, str], receiver: Receiver, budget: int) -> Settings:
    return load_settings({**base_env, "ALERT_WEBHOOK_URL": receiver.url + "/hook?token=SECRET",
                          "STORAGE_BUDGET_BYTES": str(budget), "STORAGE_ALERT_DAYS": "14",
                          "NOTIFY_REMINDER_SECONDS": "3600"})


def _used(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())


def _check(engine: Engine, settings: Settings, now: datetime, receiver: Receiver
           ) -> list[dict[str, Any]]:
    """One hourly upkeep (fold, sample, budget), its sends, and what the receiver got."""
    with unit_of_work(engine) as session:
        usage.maintain(session, now)
        ids = check_budget(session, settings, now)
    for notification_id in ids:
        assert send_notification(engine, notification_id, settings).status == "sent"
    return [body for _path, body in receiver.take()]


def test_told_once_under_the_alert_days_reminded_then_recovered(
        notify_db: Engine, base_env: dict[str, str], receiver: Receiver) -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    used = _used(notify_db)
    # A day ago the database was 1 GiB smaller: it grows 1 GiB a day, 3 GiB of budget left.
    with notify_db.begin() as conn:
        conn.execute(text("INSERT INTO storage_samples VALUES (:at, :bytes)"),
                     {"at": now - timedelta(days=1), "bytes": used - GIB})
    settings = _settings(base_env, receiver, used + 3 * GIB)
    got = _check(notify_db, settings, now, receiver)
    assert [(b["source"], b["event"], b["state"], b["severity"]) for b in got] == [
        ("storage", "storage_low", "low", "warning")]
    assert got[0]["text"] == "storage is running low: the disk budget is near"
    left, _, rest = got[0]["error"].partition(" days left: ")
    assert 2.5 < float(left) < 3.5 and rest.endswith("growing 1.0 GiB a day"), got[0]["error"]
    assert "SECRET" not in str(got)

    assert _check(notify_db, settings, now + HOUR / 2, receiver) == []  # told already
    reminded = _check(notify_db, settings, now + HOUR * 2, receiver)
    assert [b["event"] for b in reminded] == ["reminder"]
    assert reminded[0]["text"] == "storage is still low"

    roomy = _settings(base_env, receiver, used + 10_000 * GIB)
    assert [b["event"] for b in _check(notify_db, roomy, now + HOUR * 3, receiver)] == [
        "recovered"]
    assert _check(notify_db, roomy, now + HOUR * 4, receiver) == []
    with notify_db.connect() as conn:
        state = conn.execute(text(
            "SELECT state FROM alert_states WHERE source = 'storage'")).scalar_one()
    assert state == "ok"


def test_figures_growth_and_days_left(notify_db: Engine, base_env: dict[str, str],
                                      receiver: Receiver) -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    settings = _settings(base_env, receiver, 10**15)
    with unit_of_work(notify_db) as session:
        usage.record_sample(session, now)
        alone = usage.storage_figures(session, settings)
    # One sample: no growth yet, so no days left; the catalog's tables are all there.
    assert alone["growth_bytes_per_day"] is None and alone["days_left"] is None
    tables = {t["table"]: t for t in alone["tables"]}
    assert {"quotes", "raw_line_blocks", "runs", "layer_counts"} <= set(tables)
    assert tables["quotes"]["partitions"], "quotes is partitioned: its partitions are listed"
    assert tables["quotes"]["bytes"] == sum(p["bytes"] for p in tables["quotes"]["partitions"])
    assert alone["database_bytes"] >= sum(t["bytes"] for t in alone["tables"])
    with notify_db.begin() as conn:
        # Two days ago 2 GiB less, and 40 days ago a sample that is forgotten.
        conn.execute(text("INSERT INTO storage_samples VALUES (:a, :b), (:c, :d)"),
                     {"a": now - timedelta(days=2), "b": alone["database_bytes"] - 2 * GIB,
                      "c": now - timedelta(days=40), "d": 1})
    with unit_of_work(notify_db) as session:
        usage.record_sample(session, now + timedelta(seconds=1))
        grown = usage.storage_figures(session, settings)
    with notify_db.connect() as conn:
        oldest = conn.execute(text("SELECT min(sampled_at) FROM storage_samples")).scalar_one()
    assert oldest == now - timedelta(days=2)
    assert grown["growth_span_hours"] == 48.0
    assert abs(grown["growth_bytes_per_day"] - GIB) < 0.01 * GIB
    expected = (10**15 - grown["database_bytes"]) / grown["growth_bytes_per_day"]
    assert abs(grown["days_left"] - expected) <= 0.1
    assert usage.days_left(5, 5, 1.0) == 0.0 and usage.days_left(1, 5, 0.0) is None
