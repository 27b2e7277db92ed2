"""Hostile JSON bodies are a 4xx, never a 500: deep nesting, oversize, wrong type, bad bytes."""
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine


@pytest.mark.parametrize(("body", "statuses"), [
    (b"[" * 20_000 + b"]" * 20_000, (400, 422)),
    (b'{"sources":' + b"[" * 5_000 + b"]" * 5_000 + b"}", (400, 422)),
    (b'{"sources": ["csv"], "x": "' + b"a" * (70 * 1024) + b'"}', (413,)),
    (b'{"sources": ["csv"', (400,)),
    (b'{"sources": "\xff\xfe"}', (400, 422)),
    (b'{"sources": [' + b'"csv",' * 5_000 + b'"csv"]}', (400, 413, 422)),
    (b"null", (400, 422)),
])
def test_hostile_json_bodies_to_post_jobs_are_4xx(
    client: Any, clean_db: Engine, auth_headers: dict[str, str], body: bytes,
    statuses: tuple[int, ...],
) -> None:
    """Each answer is the standard error body with a 4xx; nothing is queued."""
    response = client.post("/jobs", data=body, headers={
        **auth_headers, "Content-Type": "application/json"})
    assert response.status_code in statuses, (response.status_code, response.get_json())
    payload = response.get_json()
    assert payload["code"] == response.status_code and payload["message"]
    assert client.get("/jobs").get_json()["data"] == []


def test_json_bodies_to_read_endpoints_are_ignored_not_parsed(client: Any,
                                                              clean_db: Engine) -> None:
    """GET endpoints never parse a body: a deeply nested one changes nothing."""
    response = client.get("/data", data=b"[" * 50_000,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 200
