"""API reads under statement_timeout: 503 with Retry-After when one fires, probes still answer."""
from __future__ import annotations

import dataclasses
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine, pool, text
from sqlalchemy.exc import OperationalError

from shared.config import ConfigError, Settings, load_settings

ERROR_KEYS = {"code", "status", "message"}
TIMEOUT_MESSAGE = "within its time limit"


def _app(settings: Settings, **overrides: int) -> Any:
    from api import create_app

    return create_app({"TESTING": True, "RATELIMIT_ENABLED": False},
                      settings=dataclasses.replace(settings, **overrides))


@contextmanager
def _locked(engine: Engine, *tables: str, release_after_ms: int = 30_000) -> Iterator[None]:
    """ACCESS EXCLUSIVE on `tables` from another connection: every read of them waits.

    The server ends the holder after `release_after_ms` idle, which frees the lock: a short
    value releases it in the middle of a request; a long one is the safety net that turns a
    read the timeout failed to stop into a wrong answer instead of a hung test.
    """
    locker = create_engine(engine.url, poolclass=pool.NullPool)
    conn = locker.connect()
    try:
        conn.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {release_after_ms}"))
        conn.execute(text(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE"))
        yield
    finally:
        try:
            conn.rollback()
        except OperationalError:
            conn.invalidate()  # already ended by the server: the lock went with it
        conn.close()
        locker.dispose()


def _assert_timeout_answer(response: Any) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.headers["Retry-After"] == "5"
    body = response.get_json()
    assert ERROR_KEYS <= set(body) <= ERROR_KEYS | {"errors"}
    assert body["code"] == 503 and body["status"] == "Service Unavailable"
    assert TIMEOUT_MESSAGE in body["message"]
    assert "Traceback" not in response.get_data(as_text=True)


def _samples(response: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples}


def _families(response: Any) -> set[str]:
    """The metric families served, those without a sample too (counters without `_total`)."""
    return {family.name for family in text_string_to_metric_families(
        response.get_data(as_text=True))}


def _timeouts(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]
              ) -> dict[str, float]:
    return {dict(labels)["route"]: value for (name, labels), value in samples.items()
            if name == "kasparro_api_statement_timeouts_total"}


def test_settings_defaults_and_bad_values(base_env: dict[str, str]) -> None:
    defaults = load_settings(base_env)
    assert (defaults.api_statement_timeout_ms,
            defaults.api_export_statement_timeout_ms) == (5000, 25000)
    # Both end before gunicorn kills the worker of a long request: a 503, not a cut connection.
    from api.serving import gunicorn_conf

    assert defaults.api_export_statement_timeout_ms < gunicorn_conf.timeout * 1000
    custom = load_settings({**base_env, "API_STATEMENT_TIMEOUT_MS": "0",
                            "API_EXPORT_STATEMENT_TIMEOUT_MS": "120000"})
    assert (custom.api_statement_timeout_ms, custom.api_export_statement_timeout_ms) == (0, 120000)
    for name in ("API_STATEMENT_TIMEOUT_MS", "API_EXPORT_STATEMENT_TIMEOUT_MS"):
        for bad in ("-1", "5s", str(2**31)):
            with pytest.raises(ConfigError, match=name):
                load_settings({**base_env, name: bad})


def test_reads_get_set_local_writes_and_other_transactions_do_not(
    clean_db: Engine, settings: Settings
) -> None:
    from api.db import get_engine, get_session
    from api.http.read_timeout import export_engine

    app = _app(settings, api_statement_timeout_ms=1234, api_export_statement_timeout_ms=56789)
    show = text("SHOW statement_timeout")
    with app.test_request_context("/data", method="GET"):
        assert get_session().execute(show).scalar_one() == "1234ms"
        with export_engine(get_engine()).connect() as conn:
            assert conn.execute(show).scalar_one() == "56789ms"
        get_session().close()
    with app.test_request_context("/jobs", method="POST"):
        assert get_session().execute(show).scalar_one() == "0"
        get_session().close()
    with app.app_context():  # the CLI: no request
        with get_engine().connect() as conn:
            assert conn.execute(show).scalar_one() == "0"
    # SET LOCAL ended with the request's transaction: the pooled connection is back at the
    # server's default, the same under PgBouncer's transaction pooling.
    engine = app.extensions["db_engine"]
    assert engine.pool.checkedin() >= 1
    with engine.connect() as conn:
        assert conn.execute(show).scalar_one() == "0"


def test_a_read_past_its_statement_timeout_is_a_503_with_retry_after(
    clean_db: Engine, settings: Settings
) -> None:
    client = _app(settings, api_statement_timeout_ms=200).test_client()
    with _locked(clean_db, "assets", "quotes", "current_quotes"):
        # /data reads through its own connection, the others through the request's session.
        for path in ("/data", "/data/bitcoin/history", "/data/bitcoin", "/stats"):
            started = time.monotonic()
            response = client.get(path)
            # Ended by the 0.2 s timeout, not by the lock holder's end (30 s).
            assert time.monotonic() - started < 10, path
            _assert_timeout_answer(response)
    # The connections went back clean: the same reads answer once the table is free.
    assert client.get("/data").status_code == 200
    assert client.get("/data/bitcoin").status_code == 404
    timeouts = _timeouts(_samples(client.get("/metrics")))
    assert timeouts == {"/data": 1, "/data/<string:asset>/history": 1,
                        "/data/<string:asset>": 1, "/stats": 1}


def test_an_export_reads_under_the_longer_timeout(clean_db: Engine, settings: Settings) -> None:
    client = _app(settings, api_statement_timeout_ms=200,
                  api_export_statement_timeout_ms=30_000).test_client()
    # The holder is ended after 1.5 s: past the page's limit, well within the export's.
    with _locked(clean_db, "current_quotes", release_after_ms=1500):
        _assert_timeout_answer(client.get("/data"))
        started = time.monotonic()
        response = client.get("/data?format=csv")
        waited = time.monotonic() - started
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_data(as_text=True).startswith("asset_id,")
        assert waited > 0.5


def test_an_export_past_its_own_timeout_is_a_503_not_a_cut_200(
    clean_db: Engine, settings: Settings
) -> None:
    client = _app(settings, api_export_statement_timeout_ms=200).test_client()
    with _locked(clean_db, "current_quotes"):
        _assert_timeout_answer(client.get("/data?format=ndjson"))


def test_writes_are_not_limited(
    clean_db: Engine, settings: Settings, auth_headers: dict[str, str]
) -> None:
    client = _app(settings, api_statement_timeout_ms=200).test_client()
    # POST /jobs waits for the lock (1.5 s, past the reads' 0.2 s) and then succeeds.
    with _locked(clean_db, "jobs", release_after_ms=1500):
        response = client.post("/jobs", json={"sources": ["csv"]}, headers=auth_headers)
    assert response.status_code == 202, response.get_data(as_text=True)


@pytest.mark.slow
def test_health_and_metrics_answer_while_a_read_is_blocked(
    clean_db: Engine, settings: Settings
) -> None:
    # The probes' bound is max(API_STATEMENT_TIMEOUT_MS, 2 s): 2 s here.
    app = _app(settings, api_statement_timeout_ms=1500)
    blocked: dict[str, Any] = {}
    with _locked(clean_db, "quotes", "current_quotes"):
        reader = threading.Thread(
            target=lambda: blocked.update(response=app.test_client().get("/data")))
        reader.start()
        client = app.test_client()
        started = time.monotonic()
        health = client.get("/health")
        health_seconds = time.monotonic() - started
        metrics = client.get("/metrics")
        reader.join(30)
    _assert_timeout_answer(blocked["response"])
    assert health.status_code == 200, health.get_json()
    body = health.get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["freshness"] == {"ok": False, "error": "statement timeout",
                                           "latency_ms": body["checks"]["freshness"][
                                               "latency_ms"]}
    assert 1.9 < health_seconds < 10
    samples = _samples(metrics)
    sampled = {name for name, _labels in samples}
    # Three reads timed out, each leaving its own figures out: the records (the current layer
    # counts current_quotes), the storage sizes (a table's size waits for its lock) and the
    # sources' states (current_quotes); the rest (runs' HTTP totals, the queue,
    # notifications) are served.
    assert "kasparro_records" not in sampled and "kasparro_source_state" not in sampled
    assert "kasparro_storage_bytes" not in _families(metrics)
    assert "kasparro_queue_depth" in sampled
    assert {"kasparro_http_requests", "kasparro_notifications_24h"} <= _families(metrics)
    assert _timeouts(samples) == {"/data": 1, "/health": 1, "/metrics": 3}


def test_health_and_metrics_keep_their_bound_under_a_tiny_timeout(
    clean_db: Engine, settings: Settings
) -> None:
    client = _app(settings, api_statement_timeout_ms=1).test_client()
    health = client.get("/health")
    assert health.status_code == 200, health.get_json()
    checks = health.get_json()["checks"]
    assert checks["database"]["ok"] is True
    assert "error" not in checks["freshness"] or checks["freshness"]["error"] != (
        "statement timeout")
    samples = _samples(client.get("/metrics"))
    sampled = {name for name, _labels in samples}
    assert {"kasparro_records", "kasparro_source_state"} <= sampled
    assert "/metrics" not in _timeouts(samples)
