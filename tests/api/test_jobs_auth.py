"""POST /jobs: tokens (missing, wrong, in the query string), Idempotency-Key, no token in logs."""
from __future__ import annotations

import io
import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from shared.config import Settings
from tests.conftest import count, queued_messages
from tests.helpers.csv_runs import HEADER, only_file
from tests.helpers.waiting import wait_for_job


@pytest.mark.parametrize(
    ("headers", "query", "status", "phrase"),
    [
        ({}, "", 401, "missing bearer token"),
        ({"Authorization": "Bearer not-the-token"}, "", 403, "invalid bearer token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "", 401, "missing bearer token"),
        ({}, "?token=whatever", 401, "query string"),
    ],
)
def test_refused_without_the_right_token(
    clean_db: Any, client: Any, redis_url: str, headers: dict[str, str], query: str,
    status: int, phrase: str,
) -> None:
    response = client.post(f"/jobs{query}", json={"sources": ["csv"]}, headers=headers)
    assert response.status_code == status
    body = response.get_json()
    assert body["code"] == status and phrase in body["message"]
    assert count(clean_db, "jobs") == 0
    assert queued_messages(redis_url) == 0


def test_query_string_token_refused_even_when_correct(
    clean_db: Any, client: Any, auth_headers: dict[str, str], redis_url: str
) -> None:
    token = auth_headers["Authorization"].split(" ", 1)[1]
    response = client.post(f"/jobs?token={token}", json={})
    assert response.status_code == 401
    assert token not in response.get_data(as_text=True)
    assert count(clean_db, "jobs") == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [({"sources": ["nope"]}, "sources"), ({"sources": []}, "sources"),
     ({"sources": ["csv", "csv"]}, "sources"), ({"extra": 1}, "extra"),
     # Found by schemathesis' fuzzing phase: a repeat next to an unknown name was a 500.
     ({"sources": ["csv", "csv", "__not_in_enum__"]}, "sources"),
     ({"sources": ["csv", 7, None]}, "sources"), ({"sources": "csv"}, "sources"),
     ({"sources": ["csv"] * 4}, "sources"), ({"sources": [["csv"]]}, "sources")],
)
def test_bad_body_is_422_naming_the_field(
    clean_db: Any, client: Any, auth_headers: dict[str, str], redis_url: str,
    body: dict[str, Any], field: str
) -> None:
    response = client.post("/jobs", json=body, headers=auth_headers)
    assert response.status_code == 422, response.get_data(as_text=True)
    errors = response.get_json()["errors"]["json"]
    assert field in errors
    # Every message is a plain string: no index-keyed dicts (their mixed keys broke encoding).
    assert all(isinstance(m, str) for m in errors[field])
    assert count(clean_db, "jobs") == 0
    assert queued_messages(redis_url) == 0


def test_repeated_and_unknown_sources_are_each_named(
    clean_db: Any, client: Any, auth_headers: dict[str, str]
) -> None:
    response = client.post("/jobs", json={"sources": ["csv", "csv", "__not_in_enum__"]},
                           headers=auth_headers)
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"json": {"sources": [
        "item 1: csv is already listed",
        "item 2: unknown source; must be one of: coingecko, coinpaprika, csv"]}}


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "application/xml", None])
def test_a_body_that_is_not_json_is_415(
    clean_db: Any, client: Any, auth_headers: dict[str, str], redis_url: str,
    content_type: str | None
) -> None:
    headers = {**auth_headers, **({"Content-Type": content_type} if content_type else {})}
    response = client.post("/jobs", data='{"sources":["csv"]}', headers=headers)
    assert response.status_code == 415, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == 415
    assert "Content-Type" in body["errors"]["headers"]
    # Nothing was queued, let alone a job for every source.
    assert count(clean_db, "jobs") == 0
    assert queued_messages(redis_url) == 0


def test_json_variants_and_an_empty_body_are_accepted(
    clean_db: Any, client: Any, auth_headers: dict[str, str]
) -> None:
    one = client.post("/jobs", data='{"sources":["csv"]}',
                      headers={**auth_headers, "Content-Type": "application/json; charset=utf-8"})
    assert one.status_code == 202 and one.get_json()["sources"] == ["csv"]
    # No body at all still means every configured source.
    empty = client.post("/jobs", headers=auth_headers)
    assert empty.status_code == 202
    assert sorted(empty.get_json()["sources"]) == ["coingecko", "coinpaprika", "csv"]


@pytest.mark.parametrize("body", [
    "[" * 20_000 + "]" * 20_000,
    '{"sources": ' + "[" * 20_000 + "]" * 20_000 + "}",
    '{"a":' * 5_000 + "1" + "}" * 5_000,
    "[" * 33 + "]" * 33,
])
def test_deeply_nested_json_is_400_not_500(
    clean_db: Any, client: Any, auth_headers: dict[str, str], body: str
) -> None:
    response = client.post("/jobs", data=body,
                           headers={**auth_headers, "Content-Type": "application/json"})
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert "nested deeper than 32 levels" in response.get_json()["errors"]["json"][0]
    assert count(clean_db, "jobs") == 0


def test_brackets_inside_strings_do_not_count_as_nesting(
    clean_db: Any, client: Any, auth_headers: dict[str, str]
) -> None:
    # The note ends in an escaped quote and an escaped backslash: `[{ ... \" \\`.
    body = '{"sources": ["csv"], "note": "' + "[{" * 100 + r'\" \\"}'
    response = client.post("/jobs", data=body,
                           headers={**auth_headers, "Content-Type": "application/json"})
    # Shallow JSON: it reaches the schema, which names the unknown field.
    assert response.status_code == 422, response.get_data(as_text=True)
    assert "note" in response.get_json()["errors"]["json"]


def test_accepted_job_is_committed_then_queued(
    clean_db: Any, client: Any, auth_headers: dict[str, str], redis_url: str
) -> None:
    response = client.post("/jobs", json={"sources": ["csv"]}, headers=auth_headers)
    assert response.status_code == 202
    body = response.get_json()
    assert response.headers["Location"] == body["status_url"]
    assert count(clean_db, "jobs", "id = :id AND status = 'queued'", id=body["id"]) == 1
    assert count(clean_db, "runs", "job_id = :id AND source = 'csv'", id=body["id"]) == 1
    # No worker runs in this test: the chord's extract message waits in the queue.
    assert queued_messages(redis_url) == 1
    job = client.get(body["status_url"]).get_json()
    assert job["runs"][0]["status"] == "queued"


def test_idempotency_key_returns_the_same_job(
    clean_db: Any, client: Any, auth_headers: dict[str, str]
) -> None:
    headers = {**auth_headers, "Idempotency-Key": "nightly-2025-02-09"}
    first = client.post("/jobs", json={"sources": ["csv"]}, headers=headers)
    assert first.status_code == 202
    again = client.post("/jobs", json={"sources": ["csv"]}, headers=headers)
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert count(clean_db, "jobs") == 1 and count(clean_db, "runs") == 1

    # The same key for other sources is a client error naming the header.
    other = client.post("/jobs", json={"sources": ["coingecko"]}, headers=headers)
    assert other.status_code == 422
    assert "Idempotency-Key" in other.get_json()["errors"]["headers"]
    # Without a key every request is a new job.
    assert client.post("/jobs", json={"sources": ["csv"]},
                       headers=auth_headers).get_json()["id"] != first.get_json()["id"]
    assert count(clean_db, "jobs") == 2


@pytest.mark.parametrize("key", ["", "with space", "x" * 201, "caf\u00e9"])
def test_bad_idempotency_key_is_422(
    clean_db: Any, client: Any, auth_headers: dict[str, str], key: str
) -> None:
    response = client.post("/jobs", json={"sources": ["csv"]},
                           headers={**auth_headers, "Idempotency-Key": key})
    assert response.status_code == 422
    assert "Idempotency-Key" in response.get_json()["errors"]["headers"]
    assert count(clean_db, "jobs") == 0


@pytest.mark.processes
def test_token_never_reaches_the_logs_of_a_full_job(
    clean_db: Any, settings: Settings, csv_dir: Path,
    auth_headers: dict[str, str], worker_factory: Any,
) -> None:
    """API (a real HTTP server with access logs) + a real worker, everything at DEBUG."""
    from api import create_app

    token = auth_headers["Authorization"].split(" ", 1)[1]
    only_file(csv_dir, "coins.csv", HEADER + "".join(
        f"{i},Coin{i},C{i},2021-01-01 23:59:59,2,1,1,1.{i},10,100\n" for i in range(20)))
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    server = None
    try:
        debug = replace(settings, log_level="DEBUG")
        app = create_app({"TESTING": True}, settings=debug)  # installs the secret filter
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        worker = worker_factory({"CSV_DIR": str(csv_dir), "LOG_LEVEL": "DEBUG"})

        session = requests.Session()
        refused = session.post(f"{base}/jobs?token={token}", json={"sources": ["csv"]})
        assert refused.status_code == 401
        wrong = session.post(f"{base}/jobs", json={"sources": ["csv"]},
                             headers={"Authorization": f"Bearer {token}x"})
        assert wrong.status_code == 403
        accepted = session.post(f"{base}/jobs", json={"sources": ["csv"]}, headers=auth_headers)
        assert accepted.status_code == 202
        status_url = base + accepted.json()["status_url"]
        wait_for_job(lambda path: session.get(base + path).json(), accepted.json()["id"])
        assert session.get(status_url).json()["status"] == "succeeded"
    finally:
        if server is not None:
            server.shutdown()
        root.removeHandler(handler)
        root.setLevel(old_level)
    api_logs = captured.getvalue()
    worker_logs = worker.log_text()
    # The logs are real: the access log saw every request, the worker ran the job.
    assert "/jobs" in api_logs and "succeeded" in worker_logs
    # The refused request's URL was logged, with the token scrubbed.
    assert "/jobs?token=[REDACTED]" in api_logs
    assert token not in api_logs
    assert token not in worker_logs
