"""What the result backend (what Flower, `celery result` and `inspect` users read) says about
a job's extract tasks on a real worker: a failed run is a FAILURE naming the run and its
error, an active run shows PROGRESS with its counters, and the job still closes."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from celery import Celery
from celery.result import AsyncResult
from sqlalchemy import Engine, text

from shared.celery_config import celery_config
from shared.config import load_settings
from tests.conftest import count, wait_for_job
from tests.upstream import ReplayUpstream

pytestmark = pytest.mark.e2e


@pytest.fixture
def results(base_env: dict[str, str]) -> Iterator[Celery]:
    """A client of the result backend, configured as the worker is."""
    app = Celery("task-states")
    app.conf.update(celery_config(load_settings(base_env)))
    yield app
    app.close()


def _task_ids(engine: Engine, job_id: int) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT source, celery_task_id FROM runs WHERE job_id = :j"), {"j": job_id}).all())


def test_failed_extract_is_a_failure_and_active_one_shows_progress(
    clean_db: Engine, client: Any, auth_headers: dict[str, str], worker_factory: Any,
    upstream: ReplayUpstream, csv_dir: Path, results: Celery,
) -> None:
    worker_factory({
        "COINGECKO_BASE_URL": upstream.coingecko_base_url, "COINGECKO_RATE_LIMIT": "1000",
        "CSV_DIR": str(csv_dir), "CSV_BATCH_ROWS": "300", "ETL_BATCH_DELAY_SECONDS": "0.3",
    }, concurrency=3)
    upstream.add_fault("401", endpoint="coingecko")
    response = client.post("/jobs", json={"sources": ["coingecko", "csv"]}, headers=auth_headers)
    assert response.status_code == 202
    job_id = int(response.get_json()["id"])
    ids = _task_ids(clean_db, job_id)

    # While the CSV run is active its task says PROGRESS, with the run's committed counters.
    progress: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while not progress and time.monotonic() < deadline:
        state = AsyncResult(ids["csv"], app=results)
        if state.state == "PROGRESS" and state.info.get("fetched"):
            progress = dict(state.info)
        time.sleep(0.1)
    assert progress, "no PROGRESS state seen while the CSV run was active"
    assert progress["source"] == "csv" and progress["status"] == "running"
    assert 0 < progress["fetched"] <= progress["records_read"]

    job = wait_for_job(client, job_id, timeout=60)
    assert job["status"] == "partial", job
    runs = {r["source"]: r for r in job["runs"]}

    failed = AsyncResult(ids["coingecko"], app=results)
    assert failed.state == "FAILURE"
    message = str(failed.result)
    assert f"run {runs['coingecko']['id']} (coingecko) failed" in message
    assert "401" in message

    done = AsyncResult(ids["csv"], app=results)
    assert done.state == "SUCCESS"
    assert done.result["status"] == "succeeded"
    assert done.result["run_id"] == runs["csv"]["id"]
    assert done.result["inserted"] == runs["csv"]["inserted"] > 0
    # The failing source blocked nothing: the CSV rows are published, the job was closed.
    assert count(clean_db, "current_quotes", "source = 'csv'") > 0
