"""The beat tick submits a job like the API does (broker down: the job failed), one per tick."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import Engine

from shared.jobs.schedule import tick_time
from shared.jobs.submit import NOT_QUEUED
from tests.conftest import ROOT, count, queued_messages

# Starts real processes (the beat task in a fresh interpreter per tick): not in the fast subset.
pytestmark = pytest.mark.processes

# What beat's message runs, called in a fresh process as a worker child would call it.
TICK = "from worker.tasks import schedule_tick; print(schedule_tick({}))"


def _tick(base_env: dict[str, str], scheduled_at: str | None = None, **overrides: str
          ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **base_env, "PYTHONPATH": str(ROOT), **overrides}
    code = TICK.format(repr(scheduled_at) if scheduled_at else "")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
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
    done = _tick(base_env, ETL_SOURCES="csv", REDIS_URL="redis://127.0.0.1:1/0",
                 RESULT_BACKEND_MAX_RETRIES="1")
    assert done.returncode != 0
    assert "JobNotQueued" in done.stderr
    assert count(clean_db, "jobs", "trigger = 'beat' AND status = 'failed' AND error = :e",
                 e=NOT_QUEUED) == 1
    assert count(clean_db, "jobs", "status = 'queued'") == 0
    assert count(clean_db, "runs", "status = 'failed' AND error = :e", e=NOT_QUEUED) == 1


def test_two_messages_of_one_tick_make_one_job_and_one_send(
    clean_db: Engine, base_env: dict[str, str], redis_url: str
) -> None:
    """As two beats would: both messages name the tick's time; the second finds its job."""
    tick = tick_time(300, now=1_800_000_123.4)
    assert tick == "2027-01-15T08:00:00+00:00"  # the interval's start, 1_800_000_000
    first, second = (_tick(base_env, tick, ETL_SOURCES="csv,coingecko") for _ in range(2))
    assert first.returncode == second.returncode == 0, (first.stderr[-2000:], second.stderr)
    assert first.stdout.split()[-1] == second.stdout.split()[-1]
    assert "job 1 created" in first.stderr and "job 1 already created" in second.stderr
    assert count(clean_db, "jobs", "trigger = 'beat' AND idempotency_key = :k",
                 k=f"beat:incremental-etl:{tick}") == count(clean_db, "jobs") == 1
    assert queued_messages(redis_url) == 2  # the first message's chord only: one per source
    # The next interval's tick is a job of its own.
    assert _tick(base_env, tick_time(300, now=1_800_000_300), ETL_SOURCES="csv").returncode == 0
    assert count(clean_db, "jobs") == 2


def test_a_tick_sent_without_its_time_is_the_current_intervals(
    clean_db: Engine, base_env: dict[str, str]
) -> None:
    before = tick_time(3600)
    done = _tick(base_env, ETL_SOURCES="csv", ETL_SCHEDULE_SECONDS="3600")
    assert done.returncode == 0, done.stderr[-2000:]
    keys = {f"beat:incremental-etl:{t}" for t in (before, tick_time(3600))}
    assert count(clean_db, "jobs", "idempotency_key IN :keys",
                 keys=tuple(keys)) == 1
