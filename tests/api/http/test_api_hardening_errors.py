"""Stored errors are scrubbed on the way out; security headers on every response."""
from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import text

from shared.errors import PUBLIC_ERROR_MAX_LENGTH
from tests.api.helpers import Loaded

# What a run stored before public_error existed (issue 14): SQL, another row's data, a path.
OLD_ERROR = (
    "IntegrityError: (psycopg2.errors.UniqueViolation) duplicate key value violates unique "
    'constraint "asset_source_ids_pkey"\nDETAIL:  Key (source, source_asset_id)=(csv, '
    "SECRETROW) already exists.\n[SQL: INSERT INTO asset_source_ids (source, source_asset_id) "
    "VALUES (%(source)s, %(source_asset_id)s)]\n[parameters: {'source': 'csv', "
    "'source_asset_id': 'SECRETROW'}]\n(Background on this error at: https://sqlalche.me/e/20/gkpj)"
    " while reading /srv/kasparro/data/csv/coin_X.csv with api_key=SECRETKEY " + "x" * 3000
)
LEAKS = ("[SQL", "parameters", "SECRETROW", "SECRETKEY", "/srv/", "DETAIL", "sqlalche.me")


def _assert_safe(error: Any) -> None:
    assert isinstance(error, str)
    assert len(error) <= PUBLIC_ERROR_MAX_LENGTH
    for leak in LEAKS:
        assert leak not in error, (leak, error)


@pytest.fixture(scope="module")
def old_failure(loaded: Loaded) -> dict[str, int]:
    """A failed job and run carrying an error text as stored before the fix."""
    with loaded.engine.begin() as conn:
        job_id = conn.execute(text(
            "INSERT INTO jobs (status, sources, trigger, error, finished_at) "
            "VALUES ('failed', ARRAY['csv'], 'api', :e, now()) RETURNING id"),
            {"e": OLD_ERROR}).scalar_one()
        run_id = conn.execute(text(
            "INSERT INTO runs (job_id, source, status, error, started_at, finished_at) "
            "VALUES (:j, 'csv', 'failed', :e, now(), now()) RETURNING id"),
            {"j": job_id, "e": OLD_ERROR}).scalar_one()
    return {"job": job_id, "run": run_id}


def test_old_error_rows_are_scrubbed_on_the_way_out(loaded: Loaded,
                                                    old_failure: dict[str, int]) -> None:
    """/jobs/<id>, /runs, /runs/<id> and /stats serve the stored error without its detail."""
    job = loaded.client.get(f"/jobs/{old_failure['job']}")
    assert job.status_code == 200
    _assert_safe(job.json["error"])
    _assert_safe(job.json["runs"][0]["error"])
    assert job.json["error"].startswith("IntegrityError: (psycopg2.errors.UniqueViolation)")
    run = loaded.client.get(f"/runs/{old_failure['run']}")
    _assert_safe(run.json["error"])
    runs = loaded.client.get("/runs?status=failed")
    assert runs.status_code == 200
    assert runs.json["data"]
    for row in runs.json["data"]:
        _assert_safe(row["error"])
    stats = loaded.client.get("/stats")
    assert stats.status_code == 200
    failures = [s["last_failure"] for s in stats.json["sources"] if s.get("last_failure")]
    assert failures
    for failure in failures:
        _assert_safe(failure["error"])
    for body in (job.data, run.data, runs.data, stats.data):
        assert b"SECRETROW" not in body and b"[SQL" not in body


# --- security headers -------------------------------------------------------------------------

COMMON = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
          "Referrer-Policy": "no-referrer"}


@pytest.mark.parametrize(("method", "path", "headers", "cache"), [
    ("GET", "/data?page_size=2", {}, "no-cache"),
    ("GET", "/data?page_size=2", {}, "no-cache"),  # second one: served from the answer cache
    ("GET", "/data/1", {}, "no-cache"),
    ("GET", "/data?page_size=0", {}, "no-store"),  # 422
    ("GET", "/nope", {}, "no-store"),  # 404
    ("GET", "/jobs/1", {}, "no-store"),
    ("GET", "/runs", {}, "no-store"),
    ("GET", "/stats", {}, "no-store"),
    ("GET", "/health/live", {}, "no-store"),
    ("POST", "/jobs", {"Authorization": "Bearer wrong"}, "no-store"),  # 403
    ("GET", "/openapi.json", {}, "no-cache"),
    ("GET", "/metrics", {}, "no-cache"),
])
def test_security_headers_on_every_response(loaded: Loaded, method: str, path: str,
                                            headers: dict[str, str], cache: str) -> None:
    """nosniff, DENY, no-referrer and a Cache-Control on JSON answers, errors included."""
    response = loaded.client.open(path, method=method, headers=headers)
    for name, value in COMMON.items():
        assert response.headers.get(name) == value, (path, name)
    assert response.headers.get("Cache-Control") == cache, path


def test_html_pages_have_a_self_only_csp_allowing_their_inline_script(loaded: Loaded) -> None:
    """/docs: default-src 'self', frame-ancestors 'none', its inline script allowed by hash."""
    import base64
    import hashlib

    response = loaded.client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in directives["script-src"]
    html = response.get_data()
    inline = re.findall(rb"<script>(.*?)</script>", html, re.DOTALL)
    assert inline
    for body in inline:
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        assert f"'sha256-{digest}'" in directives["script-src"]
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("path", [
    "/data/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "/data?sort=%3Cscript%3Ealert(1)%3C/script%3E",
    "/data?cursor=%3Cimg%20src=x%20onerror=alert(1)%3E",
    "/raw/%3Cscript%3E",
    "/runs?status=%3Cscript%3E",
])
def test_user_input_is_never_echoed_as_markup(loaded: Loaded, path: str) -> None:
    """Errors naming bad input are JSON (no HTML content type), never a page with the input."""
    response = loaded.client.get(path)
    assert 400 <= response.status_code < 500
    assert response.mimetype == "application/json"
    assert b"<script" not in response.data.lower() or response.is_json
    assert response.headers["X-Content-Type-Options"] == "nosniff"
