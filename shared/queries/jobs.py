"""GET /jobs: the newest-first, filtered, paged job list (the read side of jobs)."""
from __future__ import annotations

from datetime import datetime
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, selectinload

from shared.models import Job
from shared.queries.paging import BIGINT_MAX, InvalidCursor, Page, decode_cursor, encode_cursor

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
    if since:
        conditions.append(Job.created_at >= since)
    if until:
        conditions.append(Job.created_at <= until)
    total = int(session.scalar(select(func.count()).select_from(Job).where(*conditions)) or 0)
    query = select(Job).options(selectinload(Job.runs)).where(*conditions)
    if cursor is not None:
        query = query.where(Job.id < _cursor_id(cursor))
        offset = 0
    rows = list(session.scalars(query.order_by(Job.id.desc()).offset(offset).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor({"t": "jobs", "id": rows[-1].id}) if more and rows else None
    return Page(rows=rows, total=total, next_cursor=next_cursor)
