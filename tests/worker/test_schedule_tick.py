"""The beat tick submits a job like the API does: with the broker down the job is failed."""
from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import Engine

from shared.jobs.submit import NOT_QUEUED
from tests.conftest import ROOT, count

# What beat's message runs, called in a fresh process as a worker child would call it.
TICK = "from worker.tasks import schedule_tick; print(schedule_tick())"


def _tick(base_env: dict[str, str], **overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **base_env, "PYTHONPATH": str(ROOT), **overrides}
    return subprocess.run([sys.executable, "-c", TICK], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=120)


def test_tick_queues_a_beat_job_for_every_enabled_source(
    clean_db: Engine, base_env: dict[str, str]
) -> None:
    done = _tick(base_env, ETL_SOURCES="csv,coingecko")
    assert done.returncode == 0, done.stderr[-2000:]
    job_id = int(done.stdout.strip().splitlines()[-1])
    assert count(clean_db, "jobs", "id = :id AND trigger = 'beat' AND status = 'queued'",
                 id=job_id) == 1
    assert count(clean_db, "runs", "job_id = :id", id=job_id) == 2


def test_tick_with_the_broker_down_fails_its_job(
    clean_db: Engine, base_env: dict[str, str]
) -> None:
    done = _tick(base_env, ETL_SOURCES="csv", REDIS_URL="redis://127.0.0.1:1/0")
    assert done.returncode != 0
    assert "JobNotQueued" in done.stderr
    assert count(clean_db, "jobs", "trigger = 'beat' AND status = 'failed' AND error = :e",
                 e=NOT_QUEUED) == 1
    assert count(clean_db, "jobs", "status = 'queued'") == 0
    assert count(clean_db, "runs", "status = 'failed' AND error = :e", e=NOT_QUEUED) == 1
