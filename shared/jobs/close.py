"""Closing jobs: a job's status from its runs, finalize once every run ended, reap the lost."""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Sequence

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from shared.config import Settings, get_settings
from shared.db import unit_of_work
from shared.jobs.lifecycle import end_run, fail_queued_runs, now_utc
from shared.locks import run_lock, try_lock, unlock
from shared.models import TERMINAL_STATUSES, Job, Run
from shared.quality.anomalies import AnomalyThresholds, record_run_anomalies

log = logging.getLogger(__name__)


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

    The work of the `etl.normalize` chord callback (worker.tasks.normalize), also called by the
    reaper and the CLI. The cross-source step: the job's status needs every source's outcome.
    Quotes are not published here: each batch published its own when it committed
    (shared.ingest.publish). Runs at most once per job (the row lock and the terminal check
    make a second call a no-op).
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
    # A backfill's run is no sample of its source's extract runs (see record_run_anomalies).
    record_run_anomalies(session, [r.source for r in runs if r.kind == "extract"],
                         anomalies or AnomalyThresholds.from_settings(get_settings()))
    log.info("job %s %s", job.id, job.status)
    return job.status


def close_job_of_run(engine: Engine, run_id: int,
                     anomalies: AnomalyThresholds | None = None) -> str | None:
    """Finalize the run's job if every one of its runs has ended (its status), else None.

    Called by the run's execution right after the run's end is committed, so a job is closed
    when its last run ends rather than after the chord's callback has been sent through the
    broker and picked up (10-20 ms of a job's time on a quiet machine, docs/benchmarks.md).
    The callback (worker.tasks.normalize) still comes and finds the job closed. Two runs that
    end at once cannot both miss it: each reads the runs only after taking the job's row lock,
    so the later one sees the other's committed end.
    """
    with unit_of_work(engine) as session:
        job_id = session.scalar(select(Run.job_id).where(Run.id == run_id))
        if job_id is None:
            return None
        return finalize_job(session, job_id, anomalies)


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
        lock = run_lock(run.kind, run.source)
        since = (run.heartbeat_at or run.started_at or run.created_at).isoformat()
        with engine.connect() as conn:
            # A free lock proves that no live execution holds the run's source and kind.
            if not try_lock(conn, lock):
                continue
            try:
                changed = end_run(session, run.id, "failed",
                                  f"worker lost: no heartbeat since {since}", when=("running",))
                session.commit()
            finally:
                unlock(conn, lock)
        counts["runs_failed"] += int(changed)
    counts["queued_failed"] = fail_queued_runs(
        session, "never started: the task message was lost", Run.created_at < deadline)
    session.commit()
    open_jobs = session.scalars(
        select(Job.id).where(Job.status.in_(("queued", "running"))).order_by(Job.id)
    ).all()
    for job_id in open_jobs:
        if finalize_job(session, job_id) is not None:
            counts["jobs_finalized"] += 1
        session.commit()
    return counts
