"""GET /jobs and GET /jobs/<id>: the paged job list and one job (the read side of jobs)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, selectinload

from shared.models import Job
from shared.queries.paging import Page, newest_first, time_bounds

# What started a job: POST /jobs, beat's schedule, or `flask etl`.
JOB_TRIGGERS: tuple[str, ...] = ("api", "beat", "cli")


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    trigger: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    offset: int = 0,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """One page of jobs with their runs, newest first, by status, trigger and creation time."""
    conditions: list[ColumnElement[bool]] = []
    if status:
        conditions.append(Job.status == status)
    if trigger:
        conditions.append(Job.trigger == trigger)
    conditions += time_bounds(Job.created_at, since, until)
    return newest_first(session, Job, conditions, kind="jobs", offset=offset, limit=limit,
                        cursor=cursor, options=[selectinload(Job.runs)])


def load_job(session: Session, job_id: int) -> Job | None:
    """A job with its runs loaded."""
    return session.scalar(
        select(Job).options(selectinload(Job.runs)).where(Job.id == job_id)
    )
