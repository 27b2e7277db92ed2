"""Backfill requests: validate, plan, create once (same request, same backfill), read progress."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from shared import task_names
from shared.models import Backfill, BackfillChunk
from shared.backfill.plan import estimate, plan_windows, request_key
from shared.config import Settings
from shared.db import create_once
from shared.errors import EtlError
from shared.jobs.lifecycle import end_run, now_utc
from shared.jobs.submit import NOT_QUEUED, send_or_fail
from shared.models import RUN_STATUSES, Job, Run

SOURCES = ("coingecko",)
TOP_MAX = 250
CHUNK_STATES = ("pending", "running", "done", "failed")


class BackfillRequestError(EtlError):
    """A request that cannot be planned: names the field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class BackfillRequest:
    """What POST /backfills asked for, already shaped by the API's schema."""

    source: str
    since: datetime
    until: datetime | None = None
    assets: Sequence[str] | None = None
    top: int | None = None
    chunk_days: int | None = None


_COINS_BY_ID = text("""
SELECT m.source_asset_id, a.symbol, a.name FROM asset_source_ids m
JOIN assets a ON a.id = m.asset_id
WHERE m.source = :source AND m.source_asset_id = ANY(:ids)
""")
_TOP_COINS = text("""
SELECT source_asset_id, symbol, name FROM current_quotes
WHERE source = :source AND rank IS NOT NULL ORDER BY rank, asset_id LIMIT :n
""")


def resolve_coins(session: Session, req: BackfillRequest) -> list[dict[str, str]]:
    """The coins as {id, symbol, name}: named ids the source has mapped, or its top N by rank."""
    if req.top is not None:
        rows = session.execute(_TOP_COINS, {"source": req.source, "n": req.top}).all()
        if not rows:
            raise BackfillRequestError("top", f"no ranked {req.source} coins stored yet")
    else:
        ids = sorted(set(req.assets or ()))
        rows = session.execute(_COINS_BY_ID, {"source": req.source, "ids": ids}).all()
        missing = sorted(set(ids) - {r[0] for r in rows})
        if missing:
            raise BackfillRequestError(
                "assets", f"unknown {req.source} coin id(s): {', '.join(missing[:10])}")
    return sorted(({"id": r[0], "symbol": r[1], "name": r[2]} for r in rows),
                  key=lambda c: c["id"])


def _range(req: BackfillRequest, settings: Settings, now: datetime) -> tuple[datetime, datetime]:
    until = min(req.until or now, now)
    if req.since >= until:
        raise BackfillRequestError("since", "since must be before until (and before now)")
    if req.since < now - timedelta(days=settings.backfill_max_days):
        raise BackfillRequestError(
            "since", f"reaches back more than BACKFILL_MAX_DAYS={settings.backfill_max_days}")
    return req.since, until


def plan(session: Session, req: BackfillRequest, settings: Settings,
         now: datetime | None = None) -> dict[str, Any]:
    """The coins, range, windows and cost of a request, without writing anything."""
    if req.source not in SOURCES:
        raise BackfillRequestError("source", f"backfills support {', '.join(SOURCES)}")
    since, until = _range(req, settings, now or datetime.now(timezone.utc))
    chunk_days = req.chunk_days or settings.backfill_chunk_days
    coins = resolve_coins(session, req)
    windows = plan_windows(since, until, chunk_days)
    cost = estimate(len(coins) * len(windows), settings.coingecko_rate,
                    settings.backfill_quota_share)
    return {"source": req.source, "coins": coins, "since": since, "until": until,
            "chunk_days": chunk_days, "windows": windows, "chunks": len(coins) * len(windows),
            **cost}


def create_backfill(session: Session, req: BackfillRequest, settings: Settings,
                    now: datetime | None = None) -> tuple[Backfill, bool]:
    """The backfill for this request, created with its job, run and chunks (flushes only).

    Returns (backfill, created). The same coins, range and chunk size return the backfill
    made before, so a re-submission starts nothing new and writes no duplicate row.
    """
    planned = plan(session, req, settings, now)
    key = request_key(req.source, [c["id"] for c in planned["coins"]], planned["since"],
                      planned["until"], planned["chunk_days"])
    existing = session.scalar(select(Backfill).where(Backfill.request_key == key))
    if existing is not None:
        return existing, False
    # The run is the source's, of kind `backfill` (its quotes are the source's): a scheduled
    # run taking over its source, the reaper's lock, freshness and the run anomaly rules keep
    # to the source's extract runs, and a long backfill is no anomaly of theirs. It starts
    # queued: one backfill of a source runs at a time (shared.backfill.run).
    job = Job(status="queued", sources=[req.source], trigger="backfill",
              celery_task_id=str(uuid.uuid4()))
    job.runs = [Run(source=req.source, kind="backfill", status="queued")]

    def add() -> Backfill:
        session.add(job)
        session.flush()
        row = Backfill(request_key=key, source=req.source, job_id=job.id,
                       run_id=job.runs[0].id, assets=planned["coins"], since=planned["since"],
                       until=planned["until"], chunk_days=planned["chunk_days"],
                       status="queued")
        session.add(row)
        session.flush()
        return row

    # A concurrent identical request that commits first wins the key.
    backfill, created = create_once(session, add, lambda: session.scalar(
        select(Backfill).where(Backfill.request_key == key)))
    if not created:
        return backfill, False
    session.add_all(
        BackfillChunk(backfill_id=backfill.id, coin_id=coin["id"], window_start=w.start,
                      window_end=w.end, granularity_seconds=w.granularity)
        for coin in planned["coins"] for w in planned["windows"])
    session.flush()
    return backfill, True


def enqueue_backfill(celery_app: Any, backfill_id: int) -> None:
    """Send the backfill's task by name (after the commit); only its id travels."""
    celery_app.send_task(task_names.BACKFILL_RUN, args=(backfill_id,))


def submit_backfill(session: Session, celery_app: Any, req: BackfillRequest,
                    settings: Settings, now: datetime | None = None) -> tuple[Backfill, bool]:
    """Create (or find) and commit a backfill, then send it the way jobs are sent.

    Returns (backfill, created). A new backfill, or an earlier one that is neither running
    nor done, is sent after the commit through shared.jobs.submit.send_or_fail: if the broker
    refuses, the backfill, its run and job are failed with NOT_QUEUED (committed) and
    JobNotQueued is raised, so nothing stays queued; the same request sends it again later.
    """
    backfill, created = create_backfill(session, req, settings, now)
    session.commit()
    if created or backfill.status not in ("running", "succeeded"):
        backfill_id, run_id = backfill.id, backfill.run_id

        def fail_backfill(session: Session) -> None:
            session.execute(update(Backfill).where(Backfill.id == backfill_id).values(
                status="failed", error=NOT_QUEUED, finished_at=now_utc()))
            # Its run too, whatever it was: the latest attempt is the one that was not sent.
            end_run(session, run_id, "failed", NOT_QUEUED, when=RUN_STATUSES)

        send_or_fail(session, backfill.job_id,
                     lambda: enqueue_backfill(celery_app, backfill_id), fail_backfill)
    return backfill, created


def backfill_progress(session: Session, backfill_id: int) -> dict[str, Any] | None:
    """A backfill with its counts per chunk state and every chunk's progress."""
    backfill = session.get(Backfill, backfill_id)
    if backfill is None:
        return None
    chunks = session.scalars(select(BackfillChunk).where(
        BackfillChunk.backfill_id == backfill_id).order_by(BackfillChunk.id)).all()
    counts = {state: 0 for state in CHUNK_STATES}
    for chunk in chunks:
        counts[chunk.status] = counts.get(chunk.status, 0) + 1
    return {
        "id": backfill.id, "source": backfill.source, "status": backfill.status,
        "job_id": backfill.job_id, "run_id": backfill.run_id, "assets": backfill.assets,
        "since": backfill.since, "until": backfill.until, "chunk_days": backfill.chunk_days,
        "error": backfill.error, "created_at": backfill.created_at,
        "started_at": backfill.started_at, "finished_at": backfill.finished_at,
        "chunk_counts": counts, "points": sum(c.points for c in chunks),
        "inserted": sum(c.inserted for c in chunks),
        "chunks": [{"id": c.id, "coin_id": c.coin_id, "window_start": c.window_start,
                    "window_end": c.window_end, "granularity_seconds": c.granularity_seconds,
                    "status": c.status, "attempts": c.attempts, "points": c.points,
                    "inserted": c.inserted, "error": c.error} for c in chunks],
    }
