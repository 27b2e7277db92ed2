"""A run's lifecycle, for extract runs and backfills alike: start it, count its work, end it.

The one writer of a run's state and counters: shared.ingest.execute and shared.backfill.run
while they execute it (the batch writer embeds BATCH_PROGRESS_SQL in its end-of-batch
statement), the reaper and the failed submissions when nobody will. Deciding a job's own
status stays in shared.jobs.submit and shared.jobs.close.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Literal, Mapping, Sequence

from sqlalchemy import ColumnElement, func, update
from sqlalchemy.orm import Session

from shared.models import RUN_HTTP_COUNTERS, RUN_LOAD_COUNTERS, TERMINAL_STATUSES, Job, Run

log = logging.getLogger(__name__)

ACTIVE_STATUSES = ("queued", "running")

# A batch's progress, psycopg2 style (%(run)s and one parameter per load counter), for the
# batch writer's one-statement end of batch: its load counters added, the heartbeat moved.
BATCH_PROGRESS_SQL = (
    "UPDATE runs SET "
    + ", ".join(f"{name} = {name} + %({name})s" for name in RUN_LOAD_COUNTERS)
    + ", heartbeat_at = now() WHERE id = %(run)s"
)


def now_utc() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def start_run(session: Session, run_id: int, *, task_id: str | None = None,
              others: Literal["failed", "queued"] = "failed") -> None:
    """Mark the run and its job running (flushes); the caller holds the run's lock.

    The lock (shared.locks.run_lock) proves that no other run of the same source and kind
    has a live execution, so any other one still `running` is displaced first (one running
    run per source and kind): `failed` for an extract run, which never resumes; back to
    `queued` for a backfill's, which resumes when its task comes again.
    """
    # No query when the caller loaded the run in this session (it holds its row lock).
    run = session.get(Run, run_id)
    if run is None:
        raise LookupError(f"run {run_id} does not exist")
    displaced: dict[str, object] = {"status": others}
    if others == "failed":
        displaced.update(finished_at=now_utc(), error=f"worker lost; superseded by run {run_id}")
    session.execute(
        update(Run).where(Run.source == run.source, Run.kind == run.kind,
                          Run.status == "running", Run.id != run_id)
        .values(**displaced).execution_options(synchronize_session=False))
    session.execute(
        update(Run).where(Run.id == run_id).values(
            status="running", started_at=func.coalesce(Run.started_at, now_utc()),
            heartbeat_at=now_utc(), finished_at=None, error=None,
            celery_task_id=func.coalesce(task_id, Run.celery_task_id))
        .execution_options(synchronize_session="fetch"))
    # A job that ended unsent (broker down) runs again when its message comes after all.
    session.execute(
        update(Job).where(Job.id == run.job_id, Job.status != "running").values(
            status="running", started_at=func.coalesce(Job.started_at, now_utc()),
            finished_at=None, error=None)
        .execution_options(synchronize_session=False))
    session.flush()


def record_progress(session: Session, run_id: int, events: Mapping[str, float]) -> None:
    """Add its HTTP client's events to the run's counters and move its heartbeat.

    Events not among RUN_HTTP_COUNTERS (a batch's own statistics) are left out; the load
    counters come with each batch's commit (BATCH_PROGRESS_SQL).
    """
    added = {name: getattr(Run, name) + amount for name, amount in events.items()
             if name in RUN_HTTP_COUNTERS and amount}
    session.execute(update(Run).where(Run.id == run_id)
                    .values(heartbeat_at=now_utc(), **added)
                    .execution_options(synchronize_session=False))


def end_run(session: Session, run_id: int, status: str, error: str | None,
            when: Sequence[str] = ACTIVE_STATUSES) -> bool:
    """End the run in terminal `status` if it is still in one of `when`; whether it did.

    A run already ended (by the reaper, or by a newer execution) keeps that end.
    """
    assert status in TERMINAL_STATUSES, status
    run = session.get(Run, run_id, with_for_update=True, populate_existing=True)
    if run is None or run.status not in when:
        return False
    run.status, run.error, run.finished_at = status, error, now_utc()
    session.flush()
    log.info("run %s (%s %s) %s: fetched=%s inserted=%s unchanged=%s rejected=%s", run.id,
             run.kind, run.source, status, run.fetched, run.inserted, run.unchanged,
             run.rejected)
    return True


def fail_queued_runs(session: Session, error: str, *where: ColumnElement[bool]) -> int:
    """Fail the queued runs that match `where`: their message was never sent, or is lost.

    Returns how many.
    """
    result = session.execute(
        update(Run).where(Run.status == "queued", *where)
        .values(status="failed", error=error, finished_at=now_utc())
        .execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
