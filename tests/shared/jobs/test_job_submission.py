"""jobs.submit.submit_job: commit, then send the chord; a replay sends nothing; broker down fails"""
from __future__ import annotations

from typing import Iterator

import pytest
from celery import Celery
from sqlalchemy import Engine

from shared.celery_config import celery_config
from shared.config import Settings, load_settings
from shared.db import unit_of_work
from shared.jobs.submit import NOT_QUEUED, JobNotQueued, submit_job
from tests.conftest import count, queued_messages


def _sender(settings: Settings) -> Iterator[Celery]:
    app = Celery("test-sender", set_as_current=False)
    app.conf.update(celery_config(settings))
    yield app
    app.close()


@pytest.fixture
def sender(settings: Settings) -> Iterator[Celery]:
    """A sending Celery client on this test session's Redis and key prefix."""
    yield from _sender(settings)


@pytest.fixture
def dead_sender(base_env: dict[str, str]) -> Iterator[Celery]:
    """A Celery client whose broker refuses connections (nothing listens on port 1); the
    result backend's retries (20 s by default) come down to one."""
    yield from _sender(load_settings({**base_env, "REDIS_URL": "redis://127.0.0.1:1/0",
                                      "RESULT_BACKEND_MAX_RETRIES": "1"}))


def test_submit_commits_then_sends_one_message_per_source(
    clean_db: Engine, sender: Celery, redis_url: str
) -> None:
    with unit_of_work(clean_db) as session:
        created = submit_job(session, sender, ["csv", "coingecko"], "cli",
                             idempotency_key="k-submit")
        assert created.created
        # Committed before the send: another connection sees the job already.
        assert count(clean_db, "jobs", "id = :id AND status = 'queued'", id=created.job.id) == 1
    assert queued_messages(redis_url) == 2
    with unit_of_work(clean_db) as session:
        again = submit_job(session, sender, ["csv", "coingecko"], "cli",
                           idempotency_key="k-submit")
    assert not again.created and again.job.id == created.job.id
    assert queued_messages(redis_url) == 2 and count(clean_db, "jobs") == 1


def test_submit_with_the_broker_down_fails_the_job_and_raises(
    clean_db: Engine, dead_sender: Celery
) -> None:
    with pytest.raises(JobNotQueued) as raised:
        with unit_of_work(clean_db) as session:
            submit_job(session, dead_sender, ["csv", "coinpaprika"], "beat")
    job_id = raised.value.job_id
    assert count(clean_db, "jobs", "id = :id AND status = 'failed' AND error = :e",
                 id=job_id, e=NOT_QUEUED) == 1
    assert count(clean_db, "runs", "job_id = :id AND status = 'failed' AND error = :e",
                 id=job_id, e=NOT_QUEUED) == 2
