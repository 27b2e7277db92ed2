"""One JSON error shape for every non-2xx, request limits, and rate limits answering 429."""
from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import Engine

from shared.config import Settings
from tests.conftest import count

ERROR_KEYS = {"code", "status", "message"}


def _app(settings: Settings, **config: Any) -> Any:
    from api import create_app

    return create_app({"TESTING": True, **config}, settings=settings)


def _assert_error(response: Any, code: int) -> dict[str, Any]:
    assert response.status_code == code
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    assert ERROR_KEYS <= set(body) <= ERROR_KEYS | {"errors"}
    assert body["code"] == code and body["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body


@pytest.mark.parametrize(("method", "path", "code"), [
    ("get", "/nope", 404), ("get", "/data/nope/history/more", 404),
    ("delete", "/data", 405), ("put", "/jobs", 405), ("post", "/data", 405),
    ("post", "/stats", 405), ("patch", "/runs/1", 405), ("get", "/jobs/0", 404),
    ("get", "/jobs/99999999999999999999", 404), ("get", "/jobs/999999", 404),
])
def test_http_errors_are_json(clean_db: Engine, client: Any, method: str, path: str,
                              code: int) -> None:
    response = getattr(client, method)(path)
    _assert_error(response, code)
    if code == 405:
        assert response.headers["Allow"]


@pytest.mark.parametrize(("path", "location", "field"), [
    ("/data?page_size=0", "query", "page_size"),
    ("/data?sort=price_usd;drop", "query", "sort"),
    ("/data?cursor=zzz", "query", "cursor"),
    ("/data/bitcoin/history?since=2020-01-01&until=2022-01-01", "query", "until"),
    ("/raw/csv?run_id=abc", "query", "run_id"),
    ("/raw/csv?page=0", "query", "page"),
    ("/runs?status=done", "query", "status"),
    ("/runs?source=binance", "query", "source"),
    ("/runs?since=2021-02-30", "query", "since"),
    ("/runs?job_id=99999999999999999999", "query", "job_id"),
    ("/runs/compare?a=1", "query", "b"),
])
def test_bad_input_is_422_naming_the_field(clean_db: Engine, client: Any, path: str,
                                           location: str, field: str) -> None:
    body = _assert_error(client.get(path), 422)
    assert field in body["errors"][location], body


def test_oversized_body_is_413_json(
    clean_db: Engine, client: Any, auth_headers: dict[str, str]
) -> None:
    response = client.post("/jobs", data='{"sources": ["csv"], "x": "' + "a" * 70_000 + '"}',
                           headers={**auth_headers, "Content-Type": "application/json"})
    _assert_error(response, 413)
    assert count(clean_db, "jobs") == 0


def test_malformed_json_is_400_json(clean_db: Engine, client: Any,
                                    auth_headers: dict[str, str]) -> None:
    response = client.post("/jobs", data="{not json",
                           headers={**auth_headers, "Content-Type": "application/json"})
    assert response.status_code in (400, 422)
    _assert_error(response, response.status_code)
    assert count(clean_db, "jobs") == 0


def test_unexpected_error_is_a_json_500_without_trace(clean_db: Engine, settings: Settings,
                                                      caplog: Any) -> None:
    app = _app(settings)

    def boom() -> Any:
        raise RuntimeError("secret internals")

    app.add_url_rule("/boom", view_func=boom)
    response = app.test_client().get("/boom")
    body = _assert_error(response, 500)
    assert "secret internals" not in response.get_data(as_text=True)
    assert body["status"] == "Internal Server Error"
    assert "unhandled error" in caplog.text


def test_post_jobs_is_rate_limited_with_retry_after(
    clean_db: Engine, settings: Settings, auth_headers: dict[str, str]
) -> None:
    client = _app(settings, RATELIMIT_JOBS="2/minute").test_client()
    for _ in range(2):
        assert client.post("/jobs", json={"sources": ["csv"]},
                           headers=auth_headers).status_code == 202
    response = client.post("/jobs", json={"sources": ["csv"]}, headers=auth_headers)
    body = _assert_error(response, 429)
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-RateLimit-Limit"] == "2"
    assert "rate limit" in body["message"]
    assert count(clean_db, "jobs") == 2
    # Reads have their own quota.
    assert client.get("/jobs/1").status_code == 200


def test_refused_tokens_have_a_quota_of_their_own(
    clean_db: Engine, settings: Settings, auth_headers: dict[str, str]
) -> None:
    client = _app(settings, RATELIMIT_JOBS="2/minute", RATELIMIT_AUTH_FAIL="3/minute"
                  ).test_client()
    wrong = {"Authorization": "Bearer wrong"}
    # A client guessing tokens (or sending none) does not use up the operator's job quota...
    for headers, code in ((wrong, 403), ({}, 401), (wrong, 403)):
        response = client.post("/jobs", json={"sources": ["csv"]}, headers=headers)
        assert response.status_code == code
        assert response.headers["X-RateLimit-Limit"] == "3"
    # ...but once its own is used up, even the right token is refused before any comparison:
    # guessing cannot go faster than the quota, and a 429 tells nothing about the guess.
    for headers in (wrong, auth_headers):
        limited = client.post("/jobs", json={"sources": ["csv"]}, headers=headers)
        _assert_error(limited, 429)
        assert int(limited.headers["Retry-After"]) > 0
    assert count(clean_db, "jobs") == 0
    # The operator at another address is unaffected and still has both of its jobs.
    operator = {"REMOTE_ADDR": "10.9.8.7"}
    for _ in range(2):
        assert client.post("/jobs", json={"sources": ["csv"]}, headers=auth_headers,
                           environ_base=operator).status_code == 202
    assert client.post("/jobs", json={"sources": ["csv"]}, headers=auth_headers,
                       environ_base=operator).status_code == 429
    assert count(clean_db, "jobs") == 2


def test_quotas_come_from_the_environment(
    clean_db: Engine, base_env: dict[str, str], csv_dir: Any, auth_headers: dict[str, str]
) -> None:
    from shared.config import ConfigError, load_settings

    env = {**base_env, "CSV_DIR": str(csv_dir), "API_READ_RATE_LIMIT": "2/minute",
           "API_JOBS_RATE_LIMIT": "1 per 1 minute", "API_AUTH_FAIL_RATE_LIMIT": "1/hour"}
    configured = load_settings(env)
    assert (configured.api_read_rate_limit, configured.api_jobs_rate_limit,
            configured.api_auth_fail_rate_limit) == ("2/minute", "1 per 1 minute", "1/hour")
    client = _app(configured).test_client()
    assert [client.get("/stats").status_code for _ in range(3)] == [200, 200, 429]
    assert client.post("/jobs", json={"sources": ["csv"]}, headers=auth_headers).status_code == 202
    assert client.post("/jobs", json={"sources": ["csv"]}, headers=auth_headers).status_code == 429
    other = {"REMOTE_ADDR": "10.1.1.1"}
    assert client.post("/jobs", json={}, environ_base=other).status_code == 401
    limited = client.post("/jobs", json={}, environ_base=other)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 60
    # Defaults, and a value that is not a quota names its variable.
    defaults = load_settings(base_env)
    assert (defaults.api_read_rate_limit, defaults.api_jobs_rate_limit,
            defaults.api_auth_fail_rate_limit) == ("600/minute", "10/minute", "20/minute")
    for name in ("API_READ_RATE_LIMIT", "API_JOBS_RATE_LIMIT", "API_AUTH_FAIL_RATE_LIMIT"):
        with pytest.raises(ConfigError, match=name):
            load_settings({**base_env, name: "lots"})


def test_reads_share_one_quota_per_client(clean_db: Engine, settings: Settings) -> None:
    client = _app(settings, RATELIMIT_READS="6/minute").test_client()
    for path in ("/data", "/runs", "/stats", "/raw/csv", "/jobs", "/health/ready"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "Retry-After" not in response.headers
        assert response.headers["X-RateLimit-Limit"] == "6"
    limited = client.get("/data/1")
    _assert_error(limited, 429)
    assert int(limited.headers["Retry-After"]) > 0
    # Another client address has its own quota; docs and the liveness probe are never limited.
    assert client.get("/data", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert all(client.get("/health/live").status_code == 200 for _ in range(20))


@pytest.mark.parametrize("path", [
    "/health", "/health/ready", "/metrics", "/data/bitcoin/history", "/raw/csv", "/runs",
    "/stats", "/jobs", "/runs/compare?a=1&b=2"])
def test_every_endpoint_that_does_work_is_limited(
    clean_db: Engine, settings: Settings, path: str
) -> None:
    client = _app(settings, RATELIMIT_READS="2/minute").test_client()
    for _ in range(2):
        assert client.get(path).status_code != 429
    limited = client.get(path)
    assert limited.status_code == 429, path
    assert int(limited.headers["Retry-After"]) > 0
    assert client.get("/health/live").status_code == 200


def test_limits_can_be_turned_off_and_per_second_windows_reset(
    clean_db: Engine, settings: Settings
) -> None:
    off = _app(settings, RATELIMIT_ENABLED=False, RATELIMIT_READS="1/minute").test_client()
    assert all(off.get("/stats").status_code == 200 for _ in range(3))
    tight = _app(settings, RATELIMIT_READS="1/second").test_client()
    assert tight.get("/stats").status_code == 200
    assert tight.get("/stats").status_code == 429
    time.sleep(1.1)
    assert tight.get("/stats").status_code == 200


def test_redis_outage_does_not_break_reads(clean_db: Engine, base_env: dict[str, str],
                                           csv_dir: Any) -> None:
    from shared.config import load_settings

    broken = load_settings({**base_env, "REDIS_URL": "redis://127.0.0.1:1/0",
                            "CSV_DIR": str(csv_dir)})
    client = _app(broken).test_client()
    response = client.get("/data")
    assert response.status_code == 200 and response.get_json()["data"] == []
