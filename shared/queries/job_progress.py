"""A job's and its runs' state and counters as committed in PostgreSQL (progress displays)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import TERMINAL_STATUSES, Job, Run


def elapsed_seconds(started_at: datetime | None, finished_at: datetime | None) -> float | None:
    """Seconds between a run's start and end (None until it has both)."""
    if started_at is None or finished_at is None:
        return None
    return (finished_at - started_at).total_seconds()


@dataclass(frozen=True)
class RunState:
    """One run's status and counters at one moment."""

    id: int
    source: str
    status: str
    fetched: int
    inserted: int
    unchanged: int
    rejected: int
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def terminal(self) -> bool:
        """Whether the run has ended."""
        return self.status in TERMINAL_STATUSES

    @property
    def seconds(self) -> float | None:
        """How long the run took (None until it has both started and finished)."""
        return elapsed_seconds(self.started_at, self.finished_at)


@dataclass(frozen=True)
class JobState:
    """A job's status and its runs, in run id order."""

    id: int
    status: str
    trigger: str
    runs: tuple[RunState, ...]

    @property
    def terminal(self) -> bool:
        """Whether the job has been closed (normalize ran, or the reaper closed it)."""
        return self.status in TERMINAL_STATUSES

    @property
    def failed_runs(self) -> tuple[RunState, ...]:
        """The runs that ended `failed`."""
        return tuple(r for r in self.runs if r.status == "failed")


def job_state(session: Session, job_id: int) -> JobState | None:
    """The committed state of job `job_id` and its runs; None when there is no such job."""
    job = session.execute(
        select(Job.id, Job.status, Job.trigger).where(Job.id == job_id)
    ).one_or_none()
    if job is None:
        return None
    rows = session.execute(
        select(Run.id, Run.source, Run.status, Run.fetched, Run.inserted, Run.unchanged,
               Run.rejected, Run.error, Run.started_at, Run.finished_at)
        .where(Run.job_id == job_id).order_by(Run.id)
    ).all()
    runs = tuple(RunState(id=r.id, source=r.source, status=r.status, fetched=r.fetched,
                          inserted=r.inserted, unchanged=r.unchanged, rejected=r.rejected,
                          error=r.error, started_at=r.started_at, finished_at=r.finished_at)
                 for r in rows)
    return JobState(id=job.id, status=job.status, trigger=job.trigger, runs=runs)
