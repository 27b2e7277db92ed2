"""Polling until something is true: a job ended, a row written, a page ready."""
from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from sqlalchemy import Engine, text

T = TypeVar("T")
# A job in one of these states changes no more.
JOB_TERMINAL = frozenset({"succeeded", "partial", "failed", "skipped"})


def poll(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float, what: str,
         interval: float = 0.25) -> T:
    """Call `fetch` until `done` holds for what it returns; that value, or TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not within {timeout}s: {value!r}"[:3000])
        time.sleep(interval)


def wait_for_job(client: Any, job_id: int, timeout: float = 60) -> dict[str, Any]:
    """Poll GET /jobs/<id> until the job is terminal; return its body.

    `client` is a Flask test client, or a function from a path to the decoded JSON body (for a
    served API: `lambda path: requests.get(base + path).json()`).
    """
    def fetch() -> dict[str, Any]:
        path = f"/jobs/{job_id}"
        body = client(path) if callable(client) else client.get(path).get_json()
        return dict(body)

    return poll(fetch, lambda body: body["status"] in JOB_TERMINAL, timeout, f"job {job_id}")


def all_jobs_ended(engine: Engine) -> bool:
    """Whether there is a job and every job is terminal (beat's first one, say)."""
    with engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) > 0 AND bool_and(status = ANY(:ended)) FROM jobs"),
            {"ended": sorted(JOB_TERMINAL)}).scalar())
