"""Operational statistics: layers, runs, durations, rejects, drift, checkpoints, freshness."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from sqlalchemy import Row, func, select, text
from sqlalchemy.orm import Session

from shared.config import SOURCES
from shared.queries.notifications import notification_counts, recent_notifications
from shared.queries.anomalies import anomaly_counts
from shared.models import (
    RUN_STATUSES,
    Asset,
    AssetSourceId,
    Checkpoint,
    CurrentQuote,
    DriftEvent,
    Quote,
    RawItemBlock,
    RawLineBlock,
    RejectedRecord,
    Run,
)

LAYERS: tuple[str, ...] = ("raw", "quotes", "current", "assets", "source_ids", "rejected")
# What each layer counts, per source and in `totals` (served with the figures).
LAYER_MEANINGS: dict[str, str] = {
    "raw": "raw records as received: API items plus CSV lines; totals: their sum",
    "quotes": "rows of the quote time series; totals: their sum",
    "current": "current records (newest quote per asset and source); totals: their sum",
    "assets": "distinct canonical assets with an id at the source; totals: canonical assets "
              "(each once, however many sources know it, so not the sum)",
    "source_ids": "the source's own asset ids mapped to canonical assets (several ids can map "
                  "to one asset, e.g. one coin in two CSV formats); totals: their sum",
    "rejected": "rejected records; totals: their sum",
}
CHECKPOINT_LIMIT = 500
TOP_REJECT_REASONS = 10
RECENT_DRIFT_EVENTS = 20
RECENT_NOTIFICATIONS = 10

# A source's own figures (last outcomes, durations, runs per status) are its extract runs'; a
# backfill's run counts in the totals only (GET /backfills shows backfills).
_LAST_RUN_SQL = text(
    """
    SELECT DISTINCT ON (source) source, id, status, finished_at, error
    FROM runs
    WHERE status = ANY(:statuses) AND finished_at IS NOT NULL AND kind = 'extract'
    ORDER BY source, finished_at DESC, id DESC
    """
)

_TOP_REASONS_SQL = text(
    """
    SELECT source, reason, n FROM (
        SELECT source, reason, count(*) AS n,
               row_number() OVER (PARTITION BY source ORDER BY count(*) DESC, reason) AS pos
        FROM rejected_records GROUP BY source, reason
    ) ranked WHERE pos <= :top ORDER BY source, n DESC, reason
    """
)


def _counts_by_source(session: Session, column: Any, counted: Any = None) -> dict[str, int]:
    """Rows per source, or distinct values of `counted` per source."""
    measure = func.count() if counted is None else func.count(func.distinct(counted))
    rows = session.execute(select(column, measure).group_by(column)).all()
    return {str(source): int(n) for source, n in rows}


def _raw_counts(session: Session) -> dict[str, int]:
    """Raw records per source: the items in API item blocks plus the lines in line blocks."""
    counts = {str(source): int(n) for source, n in session.execute(
        select(RawItemBlock.source, func.sum(RawItemBlock.items)).group_by(RawItemBlock.source))}
    lines = session.execute(
        select(RawLineBlock.source, func.sum(func.cardinality(RawLineBlock.line_numbers)))
        .group_by(RawLineBlock.source)
    ).all()
    for source, n in lines:
        counts[str(source)] = counts.get(str(source), 0) + int(n)
    return counts


def records_by_layer(session: Session) -> dict[str, dict[str, int]]:
    """Per source, every layer of LAYERS (see LAYER_MEANINGS for what each counts)."""
    return {
        "raw": _raw_counts(session),
        "quotes": _counts_by_source(session, Quote.source),
        "current": _counts_by_source(session, CurrentQuote.source),
        "assets": _counts_by_source(session, AssetSourceId.source, AssetSourceId.asset_id),
        "source_ids": _counts_by_source(session, AssetSourceId.source),
        "rejected": _counts_by_source(session, RejectedRecord.source),
    }


def _last_runs(session: Session, statuses: Sequence[str]) -> dict[str, Row[Any]]:
    rows = session.execute(_LAST_RUN_SQL, {"statuses": list(statuses)}).all()
    return {row.source: row for row in rows}


def _run_ref(row: Row[Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"run_id": row.id, "status": row.status, "finished_at": row.finished_at,
            "error": row.error}


def _runs_by_status(session: Session) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Runs per status overall (every kind) and per source (its extract runs)."""
    runs_by_status = {status: 0 for status in RUN_STATUSES}
    per_source_status: dict[str, dict[str, int]] = defaultdict(dict)
    for source, kind, status, n in session.execute(
        select(Run.source, Run.kind, Run.status, func.count())
        .group_by(Run.source, Run.kind, Run.status)
    ).all():
        runs_by_status[status] = runs_by_status.get(status, 0) + int(n)
        if kind == "extract":
            per_source_status[source][status] = int(n)
    return runs_by_status, per_source_status


def _durations(session: Session) -> dict[str, tuple[float | None, int]]:
    """Per source: the average duration (ms) of succeeded extract runs and how many."""
    return {
        source: (float(avg) if avg is not None else None, int(n))
        for source, avg, n in session.execute(
            select(
                Run.source,
                func.avg(func.extract("epoch", Run.finished_at - Run.started_at) * 1000),
                func.count(),
            ).where(Run.status == "succeeded", Run.kind == "extract", Run.started_at.is_not(None),
                    Run.finished_at.is_not(None))
            .group_by(Run.source)
        ).all()
    }


def _reject_reasons(session: Session) -> dict[str, list[dict[str, Any]]]:
    """Per source: the most frequent reject reasons with their counts."""
    reasons: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for source, reason, n in session.execute(
        _TOP_REASONS_SQL, {"top": TOP_REJECT_REASONS}
    ).all():
        reasons[source].append({"reason": reason, "count": int(n)})
    return reasons


def _drift_counts(session: Session) -> dict[str, dict[str, int]]:
    """Per source: drift events mapped automatically and not."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"mapped": 0, "unmapped": 0})
    for source, mapped, n in session.execute(
        select(DriftEvent.source, DriftEvent.mapped, func.count())
        .group_by(DriftEvent.source, DriftEvent.mapped)
    ).all():
        counts[source]["mapped" if mapped else "unmapped"] += int(n)
    return counts


def collect_stats(session: Session) -> dict[str, Any]:
    """Everything `GET /stats` shows: layers, runs, outcomes, durations, rejects, drift."""
    layers = records_by_layer(session)
    runs_by_status, per_source_status = _runs_by_status(session)
    durations = _durations(session)
    successes = _last_runs(session, ["succeeded"])
    failures = _last_runs(session, ["failed", "partial"])
    reasons = _reject_reasons(session)
    drift_counts = _drift_counts(session)
    anomalies = anomaly_counts(session)
    sources = sorted(set(SOURCES) | {s for layer in layers.values() for s in layer}
                     | set(per_source_status))
    per_source = []
    for source in sources:
        avg_ms, _succeeded = durations.get(source, (None, 0))
        per_source.append({
            "source": source,
            "records": {layer: layers[layer].get(source, 0) for layer in LAYERS},
            "runs_by_status": {s: per_source_status[source].get(s, 0) for s in RUN_STATUSES},
            "last_success": _run_ref(successes.get(source)),
            "last_failure": _run_ref(failures.get(source)),
            "average_duration_ms": round(avg_ms, 1) if avg_ms is not None else None,
            "top_reject_reasons": reasons.get(source, []),
            "drift": dict(drift_counts.get(source, {"mapped": 0, "unmapped": 0})),
            "anomalies": {kind: n for (kind, src), n in sorted(anomalies.items())
                          if src == source},
        })
    return {
        "totals": {
            "assets": int(session.scalar(select(func.count()).select_from(Asset)) or 0),
            **{layer: sum(layers[layer].values()) for layer in LAYERS if layer != "assets"},
            "runs": sum(runs_by_status.values()),
            "anomalies": sum(anomalies.values()),
        },
        "records": layers,
        "layers": LAYER_MEANINGS,
        "runs_by_status": runs_by_status,
        "sources": per_source,
        "checkpoints": session.scalars(
            select(Checkpoint).order_by(Checkpoint.source, Checkpoint.key).limit(CHECKPOINT_LIMIT)
        ).all(),
        "recent_drift": session.scalars(
            select(DriftEvent).order_by(DriftEvent.id.desc()).limit(RECENT_DRIFT_EVENTS)
        ).all(),
        "notifications": notification_stats(
            session, datetime.now(timezone.utc) - timedelta(hours=24)),
    }


def notification_stats(session: Session, since: datetime) -> dict[str, Any]:
    """Notifications created since `since` per status and per target, and the newest ones."""
    per_status: dict[str, int] = {}
    per_target: dict[str, dict[str, int]] = defaultdict(dict)
    for (target, status), n in notification_counts(session, since).items():
        per_status[status] = per_status.get(status, 0) + n
        per_target[target][status] = n
    return {"last_24h": per_status, "by_target_24h": dict(per_target),
            "recent": recent_notifications(session, RECENT_NOTIFICATIONS)}


def source_freshness(
    session: Session, sources: Sequence[str], max_age: timedelta, now: datetime
) -> dict[str, dict[str, Any]]:
    """Per source: when its last run succeeded and whether that is younger than `max_age`."""
    last = _last_runs(session, ["succeeded"])
    result: dict[str, dict[str, Any]] = {}
    for source in sources:
        row = last.get(source)
        finished = row.finished_at if row is not None else None
        age = (now - finished).total_seconds() if finished is not None else None
        result[source] = {
            "fresh": age is not None and age <= max_age.total_seconds(),
            "last_success_at": finished,
            "age_seconds": round(age, 1) if age is not None else None,
        }
    return result


def http_totals(session: Session) -> dict[str, dict[str, float]]:
    """Per source: HTTP requests, retries, rate-limit waits and seconds waited, over all runs.

    A backfill's requests count as its source's: they spend the same upstream quota.
    """
    rows = session.execute(
        select(Run.source, func.sum(Run.http_requests), func.sum(Run.http_retries),
               func.sum(Run.rate_limit_waits), func.sum(Run.rate_limit_wait_seconds))
        .group_by(Run.source)
    ).all()
    return {
        source: {"requests": float(req or 0), "retries": float(ret or 0),
                 "rate_limit_waits": float(waits or 0),
                 "rate_limit_wait_seconds": float(secs or 0)}
        for source, req, ret, waits, secs in rows
    }
