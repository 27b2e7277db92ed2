"""What the result backend (`celery result`, AsyncResult) and Flower's API say about a job's
extract tasks on a real worker: a failed run is a FAILURE naming the run and its error, an
active run shows PROGRESS with its counters, and the job still closes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from celery import Celery
from celery.result import AsyncResult
from sqlalchemy import Engine, text

from shared.celery_config import celery_config
from shared.config import load_settings
from tests.conftest import ROOT, count
from tests.helpers.waiting import wait_for_job
from tests.faults.conftest import freeze_source_run
from tests.upstream import ReplayUpstream

pytestmark = pytest.mark.e2e


@pytest.fixture
def results(base_env: dict[str, str]) -> Iterator[Celery]:
    """A client of the result backend, configured as the worker is."""
    app = Celery("task-states")
    app.conf.update(celery_config(load_settings(base_env)))
    yield app
    app.close()


class Flower:
    """A `celery flower` subprocess with its API open (in this test only)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "flower", "--address=127.0.0.1",
             f"--port={self.port}"],
            cwd=ROOT, env={**env, "FLOWER_UNAUTHENTICATED_API": "true"}, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, path: str) -> Any:
        """GET a Flower API path; its JSON."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
            return json.loads(resp.read())

    def task(self, task_id: str) -> dict[str, Any]:
        """Flower's view of one task (empty while it has heard nothing of it)."""
        try:
            return dict(self.get(f"/api/task/info/{task_id}"))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return {}
            raise

    def wait_ready(self, timeout: float = 30) -> None:
        """Until its API answers and its event receiver has connected to the broker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                self.get("/api/tasks")
                if "Connected to" in self.log_path.read_text(errors="replace"):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(self.log_path.read_text()[-3000:])

    def stop(self) -> None:
        """Stop it."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(15)
        self._log.close()


@pytest.fixture
def flower(base_env: dict[str, str], tmp_path: Path) -> Iterator[Flower]:
    """Flower on this test session's broker, ready."""
    server = Flower({**os.environ, **base_env, "PYTHONPATH": str(ROOT)}, tmp_path / "flower.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _task_ids(engine: Engine, job_id: int) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT source, celery_task_id FROM runs WHERE job_id = :j"), {"j": job_id}).all())


def test_failed_extract_is_a_failure_and_active_one_shows_progress(
    clean_db: Engine, client: Any, auth_headers: dict[str, str], worker_factory: Any,
    upstream: ReplayUpstream, csv_dir: Path, results: Celery, flower: Flower,
) -> None:
    worker = worker_factory({
        "COINGECKO_BASE_URL": upstream.coingecko_base_url, "COINGECKO_RATE_LIMIT": "1000",
        "CSV_DIR": str(csv_dir), "CSV_BATCH_ROWS": "300", "ETL_BATCH_DELAY_SECONDS": "0.3",
    }, concurrency=3)
    upstream.add_fault("401", endpoint="coingecko")
    response = client.post("/jobs", json={"sources": ["coingecko", "csv"]}, headers=auth_headers)
    assert response.status_code == 202
    job_id = int(response.get_json()["id"])
    ids = _task_ids(clean_db, job_id)

    # While the CSV run is active its task says PROGRESS, with the run's committed counters,
    # in the result backend and in Flower. "Active" by arrangement: the state is read only
    # while the run's child is frozen (SIGSTOP, its source lock held), so the run cannot end
    # between the reads, however slowly this test or Flower runs.
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while True:
        frozen = freeze_source_run(clean_db, worker, "csv",
                                   timeout=max(1.0, deadline - time.monotonic()))
        state = AsyncResult(ids["csv"], app=results)
        if state.state == "PROGRESS" and state.info.get("fetched"):
            seen.append(dict(state.info))
        # Two progress reports: the first one's Flower event was sent (report, then event).
        if len({s["fetched"] for s in seen}) >= 2:
            break
        frozen.resume()
        assert time.monotonic() < deadline, f"no PROGRESS seen while the run was active: {seen}"
        time.sleep(0.3)
    try:
        flower_state = ""
        flower_deadline = time.monotonic() + 30
        while flower_state != "PROGRESS" and time.monotonic() < flower_deadline:
            flower_state = flower.task(ids["csv"]).get("state", "")
            time.sleep(0.1)
        assert flower_state == "PROGRESS", flower_state
        assert count(clean_db, "runs", "job_id = :j AND source = 'csv' AND status = 'running'",
                     j=job_id) == 1
    finally:
        frozen.resume()
    progress = seen[-1]
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
    # Flower tells the same story (it follows the workers' events).
    deadline = time.monotonic() + 10
    while flower.task(ids["csv"]).get("state") != "SUCCESS" and time.monotonic() < deadline:
        time.sleep(0.2)
    shown = flower.task(ids["coingecko"])
    assert shown["state"] == "FAILURE", shown
    assert f"run {runs['coingecko']['id']} (coingecko) failed" in shown["exception"]
    assert flower.task(ids["csv"])["state"] == "SUCCESS"

    # The failing source blocked nothing: the CSV rows are published, the job was closed.
    assert count(clean_db, "current_quotes", "source = 'csv'") > 0
