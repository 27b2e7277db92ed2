"""GET /jobs: the newest-first, filtered, paged job list (the read side of jobs)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, selectinload

from shared.models import Job
from shared.queries.paging import (
    BIGINT_MAX,
    InvalidCursor,
    Page,
    decode_cursor,
    fetch_page,
    time_bounds,
)

# What started a job: POST /jobs, beat's schedule, or `flask etl`.
JOB_TRIGGERS: tuple[str, ...] = ("api", "beat", "cli")


def _cursor_id(token: str) -> int:
    value = decode_cursor(token, "jobs").get("id")
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= BIGINT_MAX:
        raise InvalidCursor("cursor is not one this API issued")
    return value


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
    base = select(Job).options(selectinload(Job.runs)).where(*conditions)
    query = base
    if cursor is not None:
        query = query.where(Job.id < _cursor_id(cursor))
        offset = 0
    return fetch_page(session, query.order_by(Job.id.desc()), base, offset=offset, limit=limit,
                      cursor_of=lambda row: {"t": "jobs", "id": row.id})
