"""What the /status page reads: the last day's runs, per-source trends, quality counts."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.errors import safe_error_text
from shared.queries.job_progress import elapsed_seconds

# A 24 h grid at the default 5-minute schedule is 288 runs per source; more is a backlog.
TIMELINE_MAX_RUNS = 2000
TREND_RUNS = 30

# Extract runs only, here and in the trends: the page's Backfills section shows backfills.
# A range of ix_runs_created (migration 0023): the last day's runs, not the table.
_TIMELINE_SQL = text("""
SELECT id, job_id, source, status, created_at, started_at, finished_at, inserted, error
FROM runs WHERE created_at >= :since AND kind = 'extract'
ORDER BY created_at DESC, id DESC LIMIT :limit
""")

# The newest finished runs per source (succeeded or not: a failing source's trend shows it),
# each source's read backwards along ix_runs_source_created and stopped at :limit.
_TREND_SQL = text("""
SELECT s.source, r.id, r.status, r.inserted, r.seconds
FROM unnest(CAST(:sources AS text[])) AS s(source)
CROSS JOIN LATERAL (
    SELECT id, status, inserted, created_at,
           extract(epoch FROM finished_at - started_at) AS seconds
    FROM runs
    WHERE source = s.source AND kind = 'extract' AND finished_at IS NOT NULL
      AND started_at IS NOT NULL
    ORDER BY created_at DESC, id DESC LIMIT :limit
) r ORDER BY s.source, r.created_at, r.id
""")

# Flagged quotes: flag documents are sparse by design, and quotes flagged in their own row are
# counted per flag set as their batches store them (flag_sets.quotes, whose changes a trigger adds
# to layer_counts' `flagged`: flag_sets grows by a row per flagged run); a document counts when
# its quote holds no flag set of its own, asked per document by primary key (a subquery, not an
# anti-join, which the planner could answer with a scan of every quote). Drift events, rejects and
# anomalies of all time are the writers' counts (shared.storage.counters); the recent anomalies a
# range of ix_anomalies_created.
_QUALITY_SQL = text("""
SELECT (SELECT coalesce(sum(n), 0) FROM layer_counts WHERE layer = 'flagged')
       + (SELECT count(*) FROM quote_flags f WHERE (
            SELECT q.flag_set FROM quotes q WHERE q.asset_id = f.asset_id
            AND q.source = f.source AND q.observed_at = f.observed_at) IS NULL
         ) AS flagged_quotes,
       (SELECT count(*) FROM current_quotes WHERE quality IS NOT NULL) AS flagged_current,
       (SELECT coalesce(sum(n), 0) FROM layer_counts WHERE layer LIKE 'drift:%') AS drift_events,
       (SELECT coalesce(sum(n), 0) FROM layer_counts WHERE layer = 'rejected') AS rejects,
       (SELECT coalesce(sum(n), 0) FROM layer_counts WHERE layer LIKE 'anomaly:%') AS anomalies,
       (SELECT count(*) FROM anomalies WHERE created_at >= :since) AS anomalies_recent
""")


@dataclass(frozen=True)
class RunCell:
    """One run of the timeline: its id, status, timings, rows and short error."""

    id: int
    job_id: int
    source: str
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    inserted: int
    error: str | None

    @property
    def seconds(self) -> float | None:
        """How long it ran (None until it has started and finished)."""
        return elapsed_seconds(self.started_at, self.finished_at)


@dataclass(frozen=True)
class Trend:
    """A source's newest finished runs, oldest first: durations (s) and rows inserted."""

    source: str
    run_ids: list[int]
    seconds: list[float]
    inserted: list[int]


@dataclass(frozen=True)
class QualityCounts:
    """Counts behind the page's quality panel (all time, anomalies also since `since`)."""

    flagged_quotes: int
    flagged_current: int
    drift_events: int
    rejects: int
    anomalies: int
    anomalies_recent: int


def runs_since(session: Session, since: datetime, limit: int = TIMELINE_MAX_RUNS
               ) -> dict[str, list[RunCell]]:
    """Runs created since `since` per source, oldest first (at most `limit` newest in all)."""
    rows = session.execute(_TIMELINE_SQL, {"since": since, "limit": limit}).mappings().all()
    result: dict[str, list[RunCell]] = {}
    for row in reversed(rows):
        cell = RunCell(id=int(row["id"]), job_id=int(row["job_id"]), source=row["source"],
                       status=row["status"], created_at=row["created_at"],
                       started_at=row["started_at"], finished_at=row["finished_at"],
                       inserted=int(row["inserted"]), error=safe_error_text(row["error"]))
        result.setdefault(cell.source, []).append(cell)
    return result


def run_trends(session: Session, sources: Sequence[str], limit: int = TREND_RUNS
               ) -> dict[str, Trend]:
    """Per source, the duration and rows inserted of its newest `limit` finished runs."""
    trends = {name: Trend(name, [], [], []) for name in sources}
    rows = session.execute(_TREND_SQL, {"sources": list(sources), "limit": limit}).all()
    for source, run_id, _status, inserted, seconds in rows:
        trend = trends[source]
        trend.run_ids.append(int(run_id))
        trend.seconds.append(float(seconds or 0))
        trend.inserted.append(int(inserted))
    return trends


def quality_counts(session: Session, since: datetime) -> QualityCounts:
    """Flagged quotes (all and current), drift events, rejects, anomalies (and recent ones)."""
    row = session.execute(_QUALITY_SQL, {"since": since}).mappings().one()
    return QualityCounts(**{key: int(value) for key, value in row.items()})


_TOP_ASSETS_SQL = text("""
SELECT a.id, a.slug, a.symbol, a.name FROM assets a
JOIN (SELECT asset_id, min(rank) AS rank FROM current_quotes WHERE rank IS NOT NULL
      GROUP BY asset_id) r ON r.asset_id = a.id
ORDER BY r.rank, a.id LIMIT :limit
""")


@dataclass(frozen=True)
class AssetLink:
    """An asset the page links to (its chart page)."""

    id: int
    slug: str
    symbol: str
    name: str


def top_assets(session: Session, limit: int = 10) -> list[AssetLink]:
    """The best-ranked assets any source ranks now (the page's chart links)."""
    return [AssetLink(int(i), slug, symbol, name) for i, slug, symbol, name in
            session.execute(_TOP_ASSETS_SQL, {"limit": limit}).all()]


# The coins of the last day's data anomalies, most anomalies first: a range of
# ix_anomalies_created (a day's anomalies are one per flag kind, coin and batch), then a
# primary-key probe of assets per coin shown.
_ANOMALY_ASSETS_SQL = text("""
SELECT a.id, a.slug, a.symbol, a.name, n.anomalies FROM (
    SELECT asset_id, count(*) AS anomalies, max(id) AS last_id FROM anomalies
    WHERE created_at >= :since AND asset_id IS NOT NULL
    GROUP BY asset_id ORDER BY count(*) DESC, max(id) DESC LIMIT :limit
) n JOIN assets a ON a.id = n.asset_id
ORDER BY n.anomalies DESC, n.last_id DESC
""")


@dataclass(frozen=True)
class AnomalyAsset:
    """A coin with data anomalies recorded since some time, and how many."""

    id: int
    slug: str
    symbol: str
    name: str
    anomalies: int


def anomaly_assets(session: Session, since: datetime, limit: int = 8) -> list[AnomalyAsset]:
    """The coins with the most data anomalies recorded since `since` (the page links each)."""
    return [AnomalyAsset(int(i), slug, symbol, name, int(n)) for i, slug, symbol, name, n in
            session.execute(_ANOMALY_ASSETS_SQL, {"since": since, "limit": limit}).all()]
