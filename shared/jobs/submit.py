"""Submitting jobs: create one run per source, enqueue the chord after commit, fail when unsent."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared import task_names
from shared.db import create_once
from shared.errors import EtlError
from shared.jobs.lifecycle import fail_queued_runs, now_utc
from shared.models import Job, Run

log = logging.getLogger(__name__)

# The stored error of a job (and its runs) whose messages never reached the broker.
NOT_QUEUED = "broker unavailable: the job was not queued"


class JobNotQueued(EtlError):
    """The job was committed but the broker refused its messages; it is now failed."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id}: {NOT_QUEUED}")
        self.job_id = job_id


@dataclass(frozen=True)
class CreatedJob:
    """A job and whether this call created it (False: an Idempotency-Key replay)."""

    job: Job
    created: bool


def create_job(
    session: Session,
    sources: Sequence[str],
    trigger: str,
    idempotency_key: str | None = None,
) -> CreatedJob:
    """Insert a job with one queued run per source (flushes; the caller commits)."""

    def replayed() -> Job | None:
        if not idempotency_key:
            return None
        return session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))

    existing = replayed()
    if existing is not None:
        return CreatedJob(existing, False)
    job = Job(
        status="queued", sources=list(sources), trigger=trigger,
        idempotency_key=idempotency_key, celery_task_id=str(uuid.uuid4()),
    )
    job.runs = [Run(source=s, status="queued", celery_task_id=str(uuid.uuid4())) for s in sources]

    def add() -> Job:
        session.add(job)
        session.flush()
        return job

    # A concurrent request with the same Idempotency-Key may win the insert.
    row, created = create_once(session, add, replayed)
    return CreatedJob(row, created)


def enqueue_job(celery_app: Any, job: Job) -> None:
    """Send `group(extract per source) | normalize` by task name; call after the commit."""
    from celery import chord, signature

    header = [
        signature(task_names.extract(run.source), args=(run.id,), app=celery_app,
                  immutable=True).set(task_id=run.celery_task_id)
        for run in job.runs
    ]
    callback = signature(task_names.NORMALIZE, args=(job.id,), app=celery_app).set(
        task_id=job.celery_task_id
    )
    # A failed run fails its extract task (its state must say so), and with the Redis result
    # backend a failed header task makes the chord call the body's error callbacks instead of
    # the body, once every header task has ended: normalize is that callback too, so the job
    # is closed either way (SPEC: a failing source does not block the others).
    callback.link_error(signature(task_names.NORMALIZE, args=(None, job.id), app=celery_app,
                                  immutable=True))
    chord(header, app=celery_app)(callback)


def submit_job(
    session: Session,
    celery_app: Any,
    sources: Sequence[str],
    trigger: str,
    idempotency_key: str | None = None,
) -> CreatedJob:
    """Create and commit a job, then send its chord; a replay sends nothing.

    The one way jobs are submitted (API, beat, CLI). Enqueued only after the commit, so a
    worker never looks for a row that is not there yet; if the broker is down the job and its
    runs are failed (committed) and JobNotQueued is raised, so nothing stays `queued` forever.
    `celery_app` is whatever can send by task name (the API's sending-only client, the worker's
    app): this module never builds one.
    """
    created = create_job(session, sources, trigger, idempotency_key)
    session.commit()
    if not created.created:
        return created
    job = created.job
    try:
        send_or_fail(session, job.id, lambda: enqueue_job(celery_app, job))
    except JobNotQueued:
        session.refresh(job)
        raise
    return created


def send_or_fail(session: Session, job_id: int, send: Callable[[], None],
                 on_unsent: Callable[[Session], None] | None = None) -> None:
    """Send a committed job's messages with `send`; if the broker refuses, fail it and raise.

    The send half of every submission (submit_job, shared.backfill.request.submit_backfill): on any
    broker error the job and its queued runs are failed with NOT_QUEUED (and `on_unsent`
    marks whatever else the job stands for), committed, then JobNotQueued is raised.
    """
    try:
        send()
    except Exception as exc:  # any broker/transport error: the messages are not sent
        log.error("could not enqueue job %s: %s", job_id, type(exc).__name__)
        session.rollback()
        fail_unsent_job(session, job_id, NOT_QUEUED)
        if on_unsent is not None:
            on_unsent(session)
        session.commit()
        raise JobNotQueued(job_id) from exc


def fail_unsent_job(session: Session, job_id: int, reason: str) -> None:
    """Mark a job whose messages never reached the broker as failed (flushes)."""
    fail_queued_runs(session, reason, Run.job_id == job_id)
    session.execute(
        update(Job).where(Job.id == job_id)
        .values(status="failed", error=reason, finished_at=now_utc())
    )
    session.flush()
