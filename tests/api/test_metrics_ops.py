"""GET /metrics: per-source freshness gauges from shared.queries.freshness, queue depth, workers."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from shared import task_names
from shared.celery_config import celery_config
from shared.config import load_settings
from tests.helpers.runs import add_run


def _samples(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples}


def test_source_gauges_queue_and_workers(clean_db: Engine, base_env: dict[str, str]) -> None:
    from api import create_app

    settings = load_settings({**base_env, "ETL_SCHEDULE_SECONDS": "60",
                              "FRESHNESS_COINPAPRIKA_SECONDS": "3600"})
    now = datetime.now(timezone.utc)
    ok_at = now - timedelta(seconds=30)
    add_run(clean_db, "csv", "succeeded", ok_at)
    add_run(clean_db, "coingecko", "succeeded", now - timedelta(seconds=600))
    add_run(clean_db, "coingecko", "failed", now - timedelta(seconds=300), "coingecko: HTTP 500")
    add_run(clean_db, "coingecko", "failed", now - timedelta(seconds=200), "coingecko: HTTP 500")
    # Three tasks wait in the broker queue (no worker consumes them).
    broker = Celery("metrics-test")
    broker.conf.update(celery_config(settings))
    for _ in range(3):
        broker.send_task(task_names.NOTIFY_EVALUATE)
    client = create_app({"TESTING": True, "HEALTH_WORKER_PING_TIMEOUT": 0.2},
                        settings=settings).test_client()
    samples = _samples(client)

    def get(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert get("kasparro_source_last_success_timestamp_seconds", source="csv") == \
        ok_at.timestamp()
    assert get("kasparro_source_freshness_objective_seconds", source="csv") == 180
    assert get("kasparro_source_freshness_objective_seconds", source="coinpaprika") == 3600
    assert 30 <= get("kasparro_source_age_seconds", source="csv") < 60
    assert get("kasparro_source_consecutive_failures", source="coingecko") == 2
    assert get("kasparro_source_consecutive_failures", source="csv") == 0
    assert get("kasparro_source_state", source="coingecko", state="failing") == 1
    assert get("kasparro_source_state", source="csv", state="fresh") == 1
    assert get("kasparro_source_state", source="coinpaprika", state="stale") == 1
    # Never succeeded: no timestamp sample rather than a misleading 0.
    assert ("kasparro_source_last_success_timestamp_seconds",
            (("source", "coinpaprika"),)) not in samples
    # notify.evaluate is routed to the notify queue; every other queue is reported, empty.
    assert get("kasparro_queue_depth", queue="notify") == 3
    assert get("kasparro_queue_depth", queue="celery") == get("kasparro_queue_depth",
                                                              queue="csv") == 0
    assert get("kasparro_workers_online") == 0


def test_broker_down_leaves_broker_families_out(clean_db: Engine,
                                                base_env: dict[str, str]) -> None:
    from api import create_app

    settings = load_settings({**base_env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    add_run(clean_db, "csv", "succeeded", datetime.now(timezone.utc))
    client = create_app({"TESTING": True, "RATELIMIT_ENABLED": False,
                         "HEALTH_WORKER_PING_TIMEOUT": 0.2}, settings=settings).test_client()
    started = time.perf_counter()
    names = {name for name, _ in _samples(client)}
    # Neither the queue probe nor a worker ping waits on the dead broker.
    assert time.perf_counter() - started < 2.5
    assert "kasparro_source_freshness_objective_seconds" in names
    assert "kasparro_queue_depth" not in names and "kasparro_workers_online" not in names


def test_scrape_cost_on_loaded_sources(loaded: Any) -> None:
    """All three sources loaded through the pipeline: fresh, and a scrape stays cheap."""
    from sqlalchemy.orm import Session

    from shared.queries.freshness import source_states

    with Session(loaded.engine) as session:
        started = time.perf_counter()
        states = source_states(session, loaded.settings, datetime.now(timezone.utc))
        states_ms = (time.perf_counter() - started) * 1000
    assert {name: s.state for name, s in states.items()} == \
        {"coingecko": "fresh", "coinpaprika": "fresh", "csv": "fresh"}
    assert all(s.data_age_seconds is not None for s in states.values())
    loaded.client.get("/metrics")  # warm: the first worker ping
    started = time.perf_counter()
    assert loaded.client.get("/metrics").status_code == 200
    scrape_ms = (time.perf_counter() - started) * 1000
    print(f"source_states {states_ms:.1f} ms, /metrics {scrape_ms:.1f} ms")
