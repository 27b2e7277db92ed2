"""Operational statistics: layers, runs, durations, rejects, drift, checkpoints, storage.

Nothing here counts a table that grows every day: counts of records, runs, rejects, drift
events and anomalies are the writers' own (shared.storage.counters, exact), the rest reads
bounded ranges (a source's newest runs, the newest rejects, the last day's notifications).
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Mapping, Sequence

from sqlalchemy import Row, func, select, text
from sqlalchemy.orm import Session

from shared.config import SOURCES
from shared.queries.notifications import notification_counts, recent_notifications
from shared.models import (
    RUN_STATUSES,
    Asset,
    AssetSourceId,
    Checkpoint,
    CurrentQuote,
    DriftEvent,
)
from shared.storage import counters

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
# The layers the writers count (exact, shared.storage.counters); the others grow with the
# number of assets only, not with history, and are counted here.
KEPT_LAYERS = ("raw", "quotes", "rejected")
CHECKPOINT_LIMIT = 500
TOP_REJECT_REASONS = 10
# Reject reasons are ranked among the newest rejects only (a read of the primary key's end).
REJECT_REASON_WINDOW = 10_000
RECENT_DRIFT_EVENTS = 20
RECENT_NOTIFICATIONS = 10

# A source's last run in each status: one probe of ix_runs_source_status per (source, status),
# newest created first (one run of a source and kind runs at a time, so the newest created
# of a status is the newest finished). Extract runs only: a backfill's run counts in the
# totals only (GET /backfills shows backfills).
_LAST_RUN_SQL = text(
    """
    SELECT s.source, r.id, r.status, r.finished_at, r.error
    FROM unnest(CAST(:sources AS text[])) AS s(source)
    CROSS JOIN unnest(CAST(:statuses AS text[])) AS st(status)
    CROSS JOIN LATERAL (
        SELECT id, status, finished_at, error FROM runs
        WHERE source = s.source AND status = st.status AND kind = 'extract'
          AND finished_at IS NOT NULL
        ORDER BY created_at DESC, id DESC LIMIT 1
    ) r
    """
)

_TOP_REASONS_SQL = text(
    """
    SELECT source, reason, n FROM (
        SELECT source, reason, count(*) AS n,
               row_number() OVER (PARTITION BY source ORDER BY count(*) DESC, reason) AS pos
        FROM (SELECT source, reason FROM rejected_records ORDER BY id DESC LIMIT :window) newest
        GROUP BY source, reason
    ) ranked WHERE pos <= :top ORDER BY source, n DESC, reason
    """
)


def _counts_by_source(session: Session, column: Any, counted: Any = None) -> dict[str, int]:
    """Rows per source, or distinct values of `counted` per source (tables of assets only)."""
    measure = func.count() if counted is None else func.count(func.distinct(counted))
    rows = session.execute(select(column, measure).group_by(column)).all()
    return {str(source): int(n) for source, n in rows}


def _ints(kept: Mapping[str, Decimal]) -> dict[str, int]:
    return {source: int(n) for source, n in kept.items()}


def records_by_layer(session: Session, kept: Mapping[str, Mapping[str, Decimal]] | None = None
                     ) -> dict[str, dict[str, int]]:
    """Per source, every layer of LAYERS (see LAYER_MEANINGS for what each counts); `kept`:
    counters.totals() when the caller has it."""
    kept = counters.totals(session) if kept is None else kept
    return {
        **{layer: _ints(kept.get(layer, {})) for layer in KEPT_LAYERS},
        "current": _counts_by_source(session, CurrentQuote.source),
        "assets": _counts_by_source(session, AssetSourceId.source, AssetSourceId.asset_id),
        "source_ids": _counts_by_source(session, AssetSourceId.source),
    }


def _prefixed(kept: Mapping[str, Mapping[str, Decimal]], prefix: str
              ) -> dict[tuple[str, str], Decimal]:
    """{(rest of the layer name, source): n} for the layers named `prefix` + something."""
    return {(layer[len(prefix):], source): n for layer, by_source in kept.items()
            if layer.startswith(prefix) for source, n in by_source.items() if n}


def _last_runs(session: Session, sources: Sequence[str], statuses: Sequence[str]
               ) -> dict[str, Row[Any]]:
    """Per source, its newest finished extract run in one of `statuses`."""
    rows = session.execute(_LAST_RUN_SQL, {"sources": list(sources),
                                           "statuses": list(statuses)}).all()
    newest: dict[str, Row[Any]] = {}
    for row in rows:
        kept = newest.get(row.source)
        if kept is None or (row.finished_at, row.id) > (kept.finished_at, kept.id):
            newest[row.source] = row
    return newest


def _run_ref(row: Row[Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"run_id": row.id, "status": row.status, "finished_at": row.finished_at,
            "error": row.error}


def _runs_by_status(kept: Mapping[str, Mapping[str, Decimal]]
                    ) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Runs per status overall (every kind) and per source (its extract runs)."""
    runs_by_status = {status: 0 for status in RUN_STATUSES}
    per_source_status: dict[str, dict[str, int]] = defaultdict(dict)
    for (kind_status, source), n in _prefixed(kept, "runs:").items():
        kind, _, status = kind_status.partition(":")
        runs_by_status[status] = runs_by_status.get(status, 0) + int(n)
        if kind == "extract":
            per_source_status[source][status] = int(n)
    return runs_by_status, per_source_status


def _durations(kept: Mapping[str, Mapping[str, Decimal]]) -> dict[str, float | None]:
    """Per source: the average duration (ms) of its succeeded extract runs."""
    timed = kept.get("succeeded_timed:extract", {})
    total = kept.get("succeeded_ms:extract", {})
    return {source: float(total.get(source, 0) / n) if n else None
            for source, n in timed.items()}


def _reject_reasons(session: Session) -> dict[str, list[dict[str, Any]]]:
    """Per source: the most frequent reasons among the newest REJECT_REASON_WINDOW rejects."""
    reasons: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for source, reason, n in session.execute(
        _TOP_REASONS_SQL, {"top": TOP_REJECT_REASONS, "window": REJECT_REASON_WINDOW}
    ).all():
        reasons[source].append({"reason": reason, "count": int(n)})
    return reasons


def _drift_counts(kept: Mapping[str, Mapping[str, Decimal]]) -> dict[str, dict[str, int]]:
    """Per source: drift events mapped automatically and not."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"mapped": 0, "unmapped": 0})
    for (mapped, source), n in _prefixed(kept, "drift:").items():
        counts[source][mapped] += int(n)
    return counts


def anomaly_counts(kept: Mapping[str, Mapping[str, Decimal]]) -> dict[tuple[str, str], int]:
    """{(kind, source): how many anomalies are recorded}, as their writers counted them."""
    return {key: int(n) for key, n in _prefixed(kept, "anomaly:").items()}


def collect_stats(session: Session,
                  kept: dict[str, dict[str, Decimal]] | None = None) -> dict[str, Any]:
    """Everything `GET /stats` shows: layers, runs, outcomes, durations, rejects, drift;
    `kept` is counters.totals() when the caller has it."""
    kept = counters.totals(session) if kept is None else kept
    layers = records_by_layer(session, kept)
    runs_by_status, per_source_status = _runs_by_status(kept)
    durations = _durations(kept)
    reasons = _reject_reasons(session)
    drift_counts = _drift_counts(kept)
    anomalies = anomaly_counts(kept)
    sources = sorted(set(SOURCES) | {s for layer in layers.values() for s in layer}
                     | set(per_source_status))
    successes = _last_runs(session, sources, ["succeeded"])
    failures = _last_runs(session, sources, ["failed", "partial"])
    per_source = []
    for source in sources:
        avg_ms = durations.get(source)
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


def http_totals(session: Session, kept: dict[str, dict[str, Decimal]] | None = None
                ) -> dict[str, dict[str, float]]:
    """Per source: HTTP requests, retries, rate-limit waits and seconds waited, over all runs.

    A backfill's requests count as its source's: they spend the same upstream quota.
    """
    kept = counters.totals(session) if kept is None else kept
    names = ("requests", "retries", "rate_limit_waits", "rate_limit_wait_seconds")
    layers = {name: kept.get(name if name.startswith("rate") else f"http_{name}", {})
              for name in names}
    # Every source with a run, as when these were sums over its runs.
    sources = {source for _, source in _prefixed(kept, "runs:")}
    return {source: {name: float(layers[name].get(source, 0)) for name in names}
            for source in sorted(sources)}
