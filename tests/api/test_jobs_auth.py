"""POST /jobs refuses missing, wrong and query-string tokens, and then enqueues nothing."""
from __future__ import annotations

from typing import Any

import pytest
import redis

from tests.conftest import count


def _queued_messages(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.llen("celery"))
    finally:
        client.close()


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
    assert _queued_messages(redis_url) == 0


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
     ({"sources": ["csv", "csv"]}, "sources"), ({"extra": 1}, "extra")],
)
def test_bad_body_is_422_naming_the_field(
    clean_db: Any, client: Any, auth_headers: dict[str, str], body: dict[str, Any], field: str
) -> None:
    response = client.post("/jobs", json=body, headers=auth_headers)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]["json"]
    assert count(clean_db, "jobs") == 0


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
    assert _queued_messages(redis_url) == 1
    job = client.get(body["status_url"]).get_json()
    assert job["runs"][0]["status"] == "queued"
