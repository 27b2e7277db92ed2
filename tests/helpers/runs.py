"""Finished jobs and runs written straight into the tables, as the pipeline leaves them."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, text

# Where add_run_in_series starts its runs, five minutes apart.
SERIES_START = datetime(2026, 12, 1, tzinfo=timezone.utc)


def add_run(engine: Engine, source: str, status: str, finished: datetime | None,
            error: str | None = None, trigger: str = "beat") -> int:
    """A finished job with one run, as the pipeline leaves it; returns the run id."""
    with engine.begin() as conn:
        job = conn.execute(text(
            "INSERT INTO jobs (status, sources, trigger, created_at, finished_at) "
            "VALUES (:s, ARRAY[:src], :t, :f - interval '5 seconds', :f) RETURNING id"),
            {"s": status, "src": source, "t": trigger, "f": finished}).scalar_one()
        return int(conn.execute(text(
            "INSERT INTO runs (job_id, source, status, error, started_at, finished_at) "
            "VALUES (:j, :src, :s, :e, :f - interval '4 seconds', :f) RETURNING id"),
            {"j": job, "src": source, "s": status, "e": error, "f": finished}).scalar_one())


def add_run_in_series(conn: Any, source: str, status: str = "succeeded", inserted: int = 250,
                      fetched: int = 250, seconds: float = 10.0, rejected: int = 0,
                      error: str | None = None) -> int:
    """One job with one finished run of `source`, five minutes after the previous run."""
    n = conn.execute(text("SELECT count(*) FROM runs")).scalar_one()
    start = SERIES_START + timedelta(minutes=5 * n)
    job = conn.execute(text(
        "INSERT INTO jobs (status, sources, trigger) VALUES (:s, ARRAY[:src], 'schedule') "
        "RETURNING id"), {"s": status, "src": source}).scalar_one()
    return int(conn.execute(text(
        "INSERT INTO runs (job_id, source, status, fetched, inserted, rejected, error, "
        "started_at, finished_at) VALUES (:j, :src, :s, :f, :i, :r, :e, :a, :b) RETURNING id"),
        {"j": job, "src": source, "s": status, "f": fetched, "i": inserted, "r": rejected,
         "e": error, "a": start, "b": start + timedelta(seconds=seconds)}).scalar_one())
