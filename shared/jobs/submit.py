"""Jobs: create one run per source, enqueue the chord after commit, close them, reap the lost."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from shared import task_names
from shared.quality.anomalies import AnomalyThresholds, record_run_anomalies
from shared.config import Settings, get_settings
from shared.errors import EtlError
from shared.models import TERMINAL_STATUSES, Job, Run
from shared.ingest.execute import now_utc, release_source_lock, try_source_lock

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
    if idempotency_key:
        existing = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if existing is not None:
            return CreatedJob(existing, False)
    job = Job(
        status="queued", sources=list(sources), trigger=trigger,
        idempotency_key=idempotency_key, celery_task_id=str(uuid.uuid4()),
    )
    job.runs = [Run(source=s, status="queued", celery_task_id=str(uuid.uuid4())) for s in sources]
    try:
        # Added inside the savepoint so that, if it rolls back, the objects leave the session
        # with it instead of failing every later flush.
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert.
        existing = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return CreatedJob(existing, False)
    return CreatedJob(job, True)


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
    stamp = now_utc()
    session.execute(
        update(Run).where(Run.job_id == job_id, Run.status == "queued")
        .values(status="failed", error=reason, finished_at=stamp)
    )
    session.execute(
        update(Job).where(Job.id == job_id)
        .values(status="failed", error=reason, finished_at=stamp)
    )
    session.flush()


def job_status_from_runs(statuses: Sequence[str]) -> str:
    """The job's terminal status given its runs' terminal statuses."""
    if statuses and all(s == "skipped" for s in statuses):
        return "skipped"
    succeeded = sum(1 for s in statuses if s == "succeeded")
    failed = sum(1 for s in statuses if s in ("failed", "partial"))
    # A partial run (CSV: some files unreadable) committed and published what it read.
    if (failed and succeeded) or "partial" in statuses:
        return "partial"
    if failed:
        return "failed"
    return "succeeded"


def finalize_job(session: Session, job_id: int,
                 anomalies: AnomalyThresholds | None = None) -> str | None:
    """Close a job once every run is terminal; None while runs are still active.

    The cross-source step: the job's status needs every source's outcome. Quotes are not
    published here: each batch published its own when it committed (shared.ingest.publish). Runs at
    most once per job (the row lock and the terminal check make a second call a no-op).
    The job's sources' run anomalies are recorded here, with the runs' final counters
    (`anomalies`: the rules' limits, by default from Settings).
    """
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        return None
    if job.status in TERMINAL_STATUSES:
        return job.status
    runs = list(session.scalars(select(Run).where(Run.job_id == job_id)))
    if any(r.status not in TERMINAL_STATUSES for r in runs):
        return None
    job.status = job_status_from_runs([r.status for r in runs])
    # A run's error usually names its source already (shared.errors.public_error).
    errors = [r.error if r.error.startswith(f"{r.source}: ") else f"{r.source}: {r.error}"
              for r in runs if r.status in ("failed", "partial") and r.error]
    job.error = "; ".join(errors)[:4000] or None
    job.started_at = job.started_at or min(
        (r.started_at for r in runs if r.started_at), default=None
    )
    job.finished_at = now_utc()
    session.flush()
    record_run_anomalies(session, [r.source for r in runs],
                         anomalies or AnomalyThresholds.from_settings(get_settings()))
    log.info("job %s %s", job.id, job.status)
    return job.status


def load_job(session: Session, job_id: int) -> Job | None:
    """A job with its runs loaded."""
    return session.scalar(
        select(Job).options(selectinload(Job.runs)).where(Job.id == job_id)
    )


def reap_stale_runs(session: Session, engine: Engine, settings: Settings) -> dict[str, int]:
    """End runs whose worker is gone and jobs whose normalize never came (commits per step)."""
    deadline = now_utc() - timedelta(seconds=settings.run_stale_seconds)
    counts = {"runs_failed": 0, "queued_failed": 0, "jobs_finalized": 0}
    stale = session.scalars(
        select(Run).where(
            Run.status == "running",
            func.coalesce(Run.heartbeat_at, Run.started_at, Run.created_at) < deadline,
        )
    ).all()
    for run in stale:
        with engine.connect() as conn:
            # A free lock proves no live execution holds the source.
            if not try_source_lock(conn, run.source):
                continue
            try:
                changed = session.execute(
                    update(Run).where(Run.id == run.id, Run.status == "running").values(
                        status="failed", finished_at=now_utc(),
                        error="worker lost: no heartbeat since "
                        f"{(run.heartbeat_at or run.started_at or run.created_at).isoformat()}",
                    )
                ).rowcount  # type: ignore[attr-defined]
                session.commit()
            finally:
                release_source_lock(conn, run.source)
        counts["runs_failed"] += int(changed or 0)
    result = session.execute(
        update(Run).where(Run.status == "queued", Run.created_at < deadline).values(
            status="failed", finished_at=now_utc(),
            error="never started: the task message was lost",
        )
    )
    counts["queued_failed"] = int(result.rowcount or 0)  # type: ignore[attr-defined]
    session.commit()
    open_jobs = session.scalars(
        select(Job.id).where(Job.status.in_(("queued", "running"))).order_by(Job.id)
    ).all()
    for job_id in open_jobs:
        if finalize_job(session, job_id) is not None:
            counts["jobs_finalized"] += 1
        session.commit()
    return counts
