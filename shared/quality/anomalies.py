"""Run anomalies (counts, durations, failure streaks, reject rates, drift): rules and storage."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.config import DEFAULTS
from shared.models import Anomaly as AnomalyRow
from shared.models import DriftEvent, Run

# Kinds of run anomaly.
INSERTED_LOW = "inserted_low"
INSERTED_HIGH = "inserted_high"
FETCHED_LOW = "fetched_low"
FETCHED_HIGH = "fetched_high"
DURATION_HIGH = "duration_high"
FAILURE_STREAK = "failure_streak"
REJECT_RATE_JUMP = "reject_rate_jump"
DRIFT = "drift"
RUN_KINDS = (INSERTED_LOW, INSERTED_HIGH, FETCHED_LOW, FETCHED_HIGH, DURATION_HIGH,
             FAILURE_STREAK, REJECT_RATE_JUMP, DRIFT)

_DONE = ("succeeded", "partial")
# Scale making the MAD a consistent estimator of the standard deviation for normal data.
_MAD_SCALE = 1.4826


@dataclass(frozen=True)
class AnomalyThresholds:
    """Limits of the run rules; `from_settings` reads them from Settings.

    The defaults are the settings' own (shared.config.DEFAULTS).
    """

    lookback_runs: int = DEFAULTS["ANOMALY_LOOKBACK_RUNS"]
    min_history: int = DEFAULTS["ANOMALY_MIN_HISTORY"]
    ratio: float = DEFAULTS["ANOMALY_RATIO"]
    robust_z: float = DEFAULTS["ANOMALY_ROBUST_Z"]
    failure_streak: int = DEFAULTS["ANOMALY_FAILURE_STREAK"]
    reject_rate_jump: float = DEFAULTS["ANOMALY_REJECT_RATE_JUMP"]

    @classmethod
    def from_settings(cls, settings: Any) -> "AnomalyThresholds":
        """The thresholds configured in `settings` (Settings.anomaly_<name> for each)."""
        return cls(**{f.name: getattr(settings, f"anomaly_{f.name}") for f in fields(cls)})


@dataclass(frozen=True)
class Anomaly:
    """One anomaly: kind, source, dedupe key, the run/time it is about, and its evidence."""

    kind: str
    source: str
    key: str
    run_id: int | None
    observed_at: datetime | None
    evidence: dict[str, Any] = field(default_factory=dict)


def duration_seconds(run: Any) -> float | None:
    """Seconds from a run's start to its end, None when either is unknown."""
    if run.started_at is None or run.finished_at is None:
        return None
    return float((run.finished_at - run.started_at).total_seconds())


def robust_z(value: float, baseline: Sequence[float]) -> tuple[float, float, float]:
    """(median, MAD, robust z of `value`); z is inf when the MAD is 0 and value differs."""
    median = statistics.median(baseline)
    mad = statistics.median(abs(b - median) for b in baseline)
    if mad == 0:
        z = 0.0 if value == median else float("inf")
    else:
        z = (value - median) / (_MAD_SCALE * mad)
    return median, mad, z


def _metric_rules(run: Any, history: Sequence[Any],
                  t: AnomalyThresholds) -> list[Anomaly]:
    metrics: list[tuple[str, str, str, Callable[[Any], float | None]]] = [
        ("inserted", INSERTED_LOW, INSERTED_HIGH, lambda r: float(r.inserted)),
        ("fetched", FETCHED_LOW, FETCHED_HIGH, lambda r: float(r.fetched)),
        ("duration_seconds", "", DURATION_HIGH, duration_seconds),
    ]
    found: list[Anomaly] = []
    for name, low_kind, high_kind, read in metrics:
        value = read(run)
        baseline = [v for v in (read(h) for h in history) if v is not None]
        if value is None or len(baseline) < t.min_history:
            continue
        median, mad, z = robust_z(value, baseline)
        # Both the robust z and the ratio must agree: the z alone fires on any change when
        # a source's runs are identical (MAD 0); the ratio alone ignores the usual spread.
        if median <= 0 or abs(z) < t.robust_z:
            continue
        kind = ""
        if value * t.ratio <= median and low_kind:
            kind = low_kind
        elif value >= median * t.ratio:
            kind = high_kind
        if not kind:
            continue
        found.append(Anomaly(kind, run.source, f"run:{run.id}", run.id, run.finished_at, {
            "metric": name, "value": value, "baseline_median": median, "baseline_mad": mad,
            "robust_z": None if z in (float("inf"), float("-inf")) else round(z, 3),
            "baseline_runs": len(baseline), "ratio_threshold": t.ratio,
            "z_threshold": t.robust_z,
            "rule": f"|robust z| >= {t.robust_z} and value off the median by {t.ratio}x",
        }))
    return found


def _reject_rate(run: Any) -> float | None:
    return run.rejected / run.fetched if run.fetched else None


def run_anomalies(runs: Sequence[Any], t: AnomalyThresholds) -> list[Anomaly]:
    """Anomalies of one source's runs (`runs` oldest first, terminal ones only).

    Each finished run is judged against the finished runs before it (up to lookback_runs);
    a failure streak is reported once, keyed by the streak's first run.
    """
    found: list[Anomaly] = []
    done: list[Any] = []
    streak: list[Any] = []
    for run in runs:
        if run.status == "failed":
            streak.append(run)
            if len(streak) == t.failure_streak:
                first = streak[0]
                found.append(Anomaly(
                    FAILURE_STREAK, run.source, f"run:{first.id}", run.id, run.finished_at, {
                        "value": len(streak), "baseline": 0, "run_ids": [r.id for r in streak],
                        "last_error": (run.error or "")[:200],
                        "rule": f"{t.failure_streak} failed runs in a row",
                    }))
            continue
        streak = []
        if run.status not in _DONE:
            continue
        history = done[-t.lookback_runs:]
        found.extend(_metric_rules(run, history, t))
        rate = _reject_rate(run)
        rates = [r for r in (_reject_rate(h) for h in history) if r is not None]
        if rate is not None and len(rates) >= t.min_history:
            median = statistics.median(rates)
            if rate - median >= t.reject_rate_jump:
                found.append(Anomaly(
                    REJECT_RATE_JUMP, run.source, f"run:{run.id}", run.id, run.finished_at, {
                        "metric": "reject_rate", "value": round(rate, 6),
                        "baseline_median": round(median, 6), "rejected": run.rejected,
                        "fetched": run.fetched, "threshold": t.reject_rate_jump,
                        "rule": "reject_rate - median(recent reject rates) < threshold",
                    }))
        done.append(run)
    return found


def drift_anomalies(events: Iterable[Any]) -> list[Anomaly]:
    """One anomaly per drift event (an upstream changed shape)."""
    return [Anomaly(DRIFT, e.source, f"drift:{e.id}", e.run_id, e.created_at, {
        "value": e.observed, "baseline": e.field, "drift_kind": e.kind, "mapped": e.mapped,
        "confidence": str(e.confidence), "detail": e.detail[:300],
        "rule": "the upstream's shape changed",
    }) for e in events]


def quote_anomalies(source: str, asset_id: int, observed_at: datetime,
                    flags: Sequence[dict[str, Any]]) -> list[Anomaly]:
    """Data anomalies of one flagged quote: one per flag kind (shared.quality.checks flags)."""
    stamp = observed_at.isoformat()
    return [Anomaly(f["flag"], source, f"quote:{asset_id}:{stamp}", None, observed_at,
                    {"asset_id": asset_id, "reason": f["reason"], **f["evidence"]})
            for f in flags]


def recent_runs(session: Session, source: str, limit: int) -> list[Run]:
    """The newest `limit` terminal extract runs of `source`, oldest first.

    A backfill's run is left out: long and large by design, it is no anomaly of the source's.
    """
    rows = session.scalars(
        select(Run).where(Run.source == source, Run.kind == "extract",
                          Run.status.in_(("succeeded", "partial", "failed")))
        .order_by(Run.id.desc()).limit(limit)
    ).all()
    return list(reversed(rows))


def source_anomalies(session: Session, source: str, t: AnomalyThresholds,
                     window_runs: int = 50) -> list[Anomaly]:
    """Run rules over `source`'s recent runs plus its drift events of those runs."""
    runs = recent_runs(session, source, window_runs + t.lookback_runs)
    found = run_anomalies(runs, t)
    if runs:
        events = session.scalars(
            select(DriftEvent).where(DriftEvent.source == source,
                                     DriftEvent.run_id >= runs[0].id)
            .order_by(DriftEvent.id)
        ).all()
        found.extend(drift_anomalies(events))
    return found


def record_run_anomalies(session: Session, sources: Iterable[str],
                         t: AnomalyThresholds) -> int:
    """Judge each source's recent runs and drift and store what is new; returns new anomalies."""
    return sum(record_anomalies(session, source_anomalies(session, source, t))
               for source in sorted(set(sources)))


def record_anomalies(session: Session, anomalies: Sequence[Anomaly]) -> int:
    """Store anomalies not stored yet (unique kind, source, key); returns how many were new."""
    if not anomalies:
        return 0
    rows = [{"kind": a.kind, "source": a.source, "key": a.key, "run_id": a.run_id,
             "observed_at": a.observed_at, "evidence": a.evidence} for a in anomalies]
    result = session.execute(
        insert(AnomalyRow).values(rows)
        .on_conflict_do_nothing(index_elements=["kind", "source", "key"])
        .returning(AnomalyRow.id)
    )
    return len(result.all())
