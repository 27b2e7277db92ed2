"""The one definition of a source's state: fresh, stale or failing against its objective."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.errors import safe_error_text

FRESH, STALE, FAILING = "fresh", "stale", "failing"
STATES = (FRESH, STALE, FAILING)
# Runs that count against a source: an error stopped them or part of their work.
FAILURE_STATUSES = ("failed", "partial")
BEAT_LOOKBACK_PERIODS = 3

# Per source, bounded reads of `runs` (each a short range of an index of migration 0023 or of
# ix_runs_source_status, however many runs history holds): the newest success, the failures
# since it, the newest finished run, the newest error and the newest beat job. The newest
# created of a status is the newest finished: one run of a source and kind runs at a time.
# Extract runs only: a backfill loads history, so it says nothing of the source's freshness.
_RUNS_SQL = text("""
SELECT s.source, ok.finished_at AS last_success_at,
       coalesce(fails.n, 0) AS consecutive_failures,
       last_run.id AS last_run_id, last_run.job_id AS last_job_id,
       last_run.status AS last_run_status,
       last_err.id AS last_error_run_id, last_err.error AS last_error,
       last_err.finished_at AS last_error_at, beat.created_at AS last_beat_at
FROM unnest(CAST(:sources AS text[])) AS s(source)
LEFT JOIN LATERAL (
    SELECT created_at, finished_at FROM runs
    WHERE source = s.source AND status = 'succeeded' AND kind = 'extract'
    ORDER BY created_at DESC LIMIT 1
) ok ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS n FROM runs r
    WHERE r.source = s.source AND r.kind = 'extract' AND r.status IN ('failed', 'partial')
      -- an index range (no OR around it): the failures since the last success only
      AND r.created_at >= coalesce(ok.created_at, '-infinity')
      AND (ok.finished_at IS NULL OR r.finished_at > ok.finished_at)
) fails ON true
LEFT JOIN LATERAL (
    SELECT id, job_id, status FROM runs
    WHERE source = s.source AND kind = 'extract' AND finished_at IS NOT NULL
    ORDER BY created_at DESC, id DESC LIMIT 1
) last_run ON true
LEFT JOIN LATERAL (
    SELECT id, error, finished_at FROM runs
    WHERE source = s.source AND kind = 'extract' AND error IS NOT NULL
    ORDER BY created_at DESC, id DESC LIMIT 1
) last_err ON true
LEFT JOIN LATERAL (
    SELECT j.created_at FROM runs r JOIN jobs j ON j.id = r.job_id
    WHERE r.source = s.source AND r.kind = 'extract' AND j.trigger = 'beat'
      AND r.created_at >= :beat_since
    ORDER BY r.created_at DESC LIMIT 1
) beat ON true
""")

_DATA_SQL = text("""
SELECT source, max(observed_at) AS newest FROM current_quotes
WHERE source = ANY(:sources) GROUP BY source
""")


@dataclass(frozen=True)
class SourceState:
    """Where a source stands now; `state` is fresh, stale or failing."""

    source: str
    state: str
    objective_seconds: int
    last_success_at: datetime | None
    age_seconds: float | None
    data_newest_at: datetime | None
    data_age_seconds: float | None
    consecutive_failures: int
    last_run_id: int | None
    last_job_id: int | None
    last_run_status: str | None
    last_error: str | None
    last_error_run_id: int | None
    last_error_at: datetime | None
    next_run_at: datetime | None

    @property
    def fresh(self) -> bool:
        """True when the state is fresh."""
        return self.state == FRESH

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (datetimes kept) for JSON schemas and templates."""
        return {**asdict(self), "fresh": self.fresh}


def classify(consecutive_failures: int, age_seconds: float | None, objective: int) -> str:
    """The state rule: failing after a failure since the last success, else stale past the
    objective (or never succeeded), else fresh."""
    if consecutive_failures > 0:
        return FAILING
    if age_seconds is None or age_seconds > objective:
        return STALE
    return FRESH


def _age(now: datetime, at: datetime | None) -> float | None:
    return round((now - at).total_seconds(), 1) if at is not None else None


def source_states(session: Session, settings: Settings, now: datetime,
                  sources: Sequence[str] | None = None) -> dict[str, SourceState]:
    """Every enabled source's state at `now`, in the order of `sources`."""
    names = list(settings.enabled_sources if sources is None else sources)
    if not names:
        return {}
    # Beat's newest job among the last few periods' runs (older says nothing of the next).
    beat_since = now - timedelta(seconds=BEAT_LOOKBACK_PERIODS * settings.etl_schedule_seconds)
    rows = session.execute(_RUNS_SQL, {"sources": names,
                                       "beat_since": beat_since}).mappings().all()
    newest: dict[str, datetime] = {
        source: at for source, at in session.execute(_DATA_SQL, {"sources": names}).all()}
    by_source = {row["source"]: row for row in rows}
    result: dict[str, SourceState] = {}
    for name in names:
        row = by_source[name]
        objective = settings.freshness_objective(name)
        age = _age(now, row["last_success_at"])
        beat = row["last_beat_at"]
        # Beat's phase is not stored: the next tick is estimated from the last beat job.
        next_run = beat + timedelta(seconds=settings.etl_schedule_seconds) if beat else None
        result[name] = SourceState(
            source=name,
            state=classify(int(row["consecutive_failures"]), age, objective),
            objective_seconds=objective,
            last_success_at=row["last_success_at"],
            age_seconds=age,
            data_newest_at=newest.get(name),
            data_age_seconds=_age(now, newest.get(name)),
            consecutive_failures=int(row["consecutive_failures"]),
            last_run_id=row["last_run_id"],
            last_job_id=row["last_job_id"],
            last_run_status=row["last_run_status"],
            last_error=safe_error_text(row["last_error"]),
            last_error_run_id=row["last_error_run_id"],
            last_error_at=row["last_error_at"],
            next_run_at=next_run,
        )
    return result
