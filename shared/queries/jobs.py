"""GET /jobs and GET /jobs/<id>: the paged job list and one job (the read side of jobs)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, selectinload

from shared.models import Job
from shared.queries.paging import Page, newest_first, where_given

# What started a job: POST /jobs, beat's schedule, or `flask etl`.
JOB_TRIGGERS: tuple[str, ...] = ("api", "beat", "cli")


def list_jobs(session: Session, *, status: str | None = None, trigger: str | None = None,
              **window: Any) -> Page:
    """One page of jobs with their runs, newest first, by status, trigger and creation time.

    `window`: since/until (of created_at), offset, limit and cursor, as newest_first takes.
    """
    conditions: list[ColumnElement[bool]] = where_given((Job.status, status),
                                                        (Job.trigger, trigger))
    return newest_first(session, Job, conditions, kind="jobs", created=Job.created_at,
                        options=[selectinload(Job.runs)], **window)


def load_job(session: Session, job_id: int) -> Job | None:
    """A job with its runs loaded."""
    return session.scalar(
        select(Job).options(selectinload(Job.runs)).where(Job.id == job_id)
    )
