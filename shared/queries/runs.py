"""GET /runs: the filtered run list, one run, and two runs side by side (GET /runs/compare)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from shared.errors import NotFound
from shared.models import RUN_COUNTERS, Job, Run
from shared.queries.paging import BIGINT_MAX, Page, newest_first, where_given

# What GET /runs/compare subtracts: the run's whole-number counters and its attempts (the
# seconds waited for the quota are no count).
COMPARED_COUNTERS: tuple[str, ...] = tuple(
    name for name in RUN_COUNTERS if name != "rate_limit_wait_seconds") + ("attempts",)


def list_runs(session: Session, *, source: str | None = None, status: str | None = None,
              job_id: int | None = None, **window: Any) -> Page:
    """One page of runs, newest first, filtered by source, status, job and creation time.

    `window`: since/until (of created_at), offset, limit and cursor, as newest_first takes.
    """
    conditions = where_given((Run.source, source), (Run.status, status), (Run.job_id, job_id))
    return newest_first(session, Run, conditions, kind="runs", created=Run.created_at, **window)


def get_run(session: Session, run_id: int) -> Run:
    """One run; NotFound when there is none."""
    run = session.get(Run, run_id) if run_id <= BIGINT_MAX else None
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def run_duration_ms(run: Run) -> float | None:
    """How long the run took, in milliseconds (None until it started and finished)."""
    if run.started_at and run.finished_at:
        return round((run.finished_at - run.started_at).total_seconds() * 1000, 1)
    return None


def _run_difference(a: Run, b: Run) -> dict[str, Any]:
    """b minus a, counter by counter, plus the duration change."""
    diff: dict[str, Any] = {name: int(getattr(b, name)) - int(getattr(a, name))
                            for name in COMPARED_COUNTERS}
    da, db = run_duration_ms(a), run_duration_ms(b)
    diff["duration_ms"] = round(db - da, 1) if da is not None and db is not None else None
    return diff


def compare_runs(session: Session, a_id: int, b_id: int) -> dict[str, Any]:
    """Compare run `a` with run `b` and, source by source, a's job with b's job.

    `per_source` pairs each source's run in a's job with the same source's run in b's job.
    When a and b belong to one job there is no second job to compare with: pairing that job
    with itself compared every run with itself (all differences 0), so `per_source` is then
    empty and `same_job` true.
    """
    a, b = get_run(session, a_id), get_run(session, b_id)
    same_job = a.job_id == b.job_id
    per_source = []
    if not same_job:
        jobs = {j.id: j for j in session.scalars(
            select(Job).options(selectinload(Job.runs)).where(Job.id.in_((a.job_id, b.job_id))))}
        runs_a = {r.source: r for r in jobs[a.job_id].runs}
        runs_b = {r.source: r for r in jobs[b.job_id].runs}
        for source in sorted(set(runs_a) | set(runs_b)):
            ra, rb = runs_a.get(source), runs_b.get(source)
            per_source.append({
                "source": source, "a": ra, "b": rb,
                "difference": (_run_difference(ra, rb)
                               if ra is not None and rb is not None else None),
            })
    return {
        "a": a, "b": b, "same_source": a.source == b.source, "same_job": same_job,
        "job_a": a.job_id, "job_b": b.job_id,
        "difference": _run_difference(a, b), "per_source": per_source,
    }
