"""Running a backfill: its chunks one by one, each committed with its checkpoint, resumable."""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from shared.backfill.fetch import ShareLimiter, chunk_batch, fetch_window, make_client
from shared.models import Backfill, BackfillChunk, Job
from shared.config import Settings
from shared.db import get_engine, unit_of_work
from shared.errors import SourceError, public_error
from shared.identity.resolve import load_aliases
from shared.ingest.batch_writer import BatchWriter
from shared.jobs.lifecycle import end_run, now_utc, record_progress, start_run
from shared.locks import backfill_lock, run_lock, try_lock, unlock
from shared.quality.checks import QualityThresholds

log = logging.getLogger("shared.backfill.request")

_CLAIM = text("""
UPDATE backfill_chunks SET status = 'running', attempts = attempts + 1, started_at = now(),
    error = NULL
WHERE id = :id RETURNING attempts
""")
_DONE = text("""
UPDATE backfill_chunks SET status = 'done', points = :points, inserted = :inserted,
    finished_at = now() WHERE id = :id
""")
_FAILED = text("""
UPDATE backfill_chunks SET status = 'failed', error = :error, finished_at = now() WHERE id = :id
""")


def _thresholds(settings: Settings) -> QualityThresholds:
    """Every quality check but staleness: a historical series is old by design."""
    thresholds = QualityThresholds.from_settings(settings)
    return replace(thresholds, stale_seconds={**thresholds.stale_seconds, "coingecko": 0})


def _start(session: Session, backfill: Backfill) -> None:
    """Mark the backfill, its run and job running (we hold the source's backfill run lock).

    Another running backfill run of the source has no live execution (we hold its lock): that
    backfill was interrupted and will resume, so its run goes back to queued.
    """
    start_run(session, backfill.run_id, others="queued")
    backfill.status, backfill.finished_at, backfill.error = "running", None, None
    backfill.started_at = backfill.started_at or now_utc()


def _next_chunk(session: Session, backfill_id: int, max_attempts: int) -> BackfillChunk | None:
    """The first chunk still to do: pending, or running/failed with attempts left."""
    return session.query(BackfillChunk).filter(
        BackfillChunk.backfill_id == backfill_id,
        BackfillChunk.status != "done",
        BackfillChunk.attempts < max_attempts,
    ).order_by(BackfillChunk.id).first()


def execute_backfill(backfill_id: int, settings: Settings, engine: Engine | None = None,
                     budget_seconds: float | None = None) -> str:
    """Run the chunks left of a backfill; returns its status, 'busy', 'wait' or 'more'.

    One execution per backfill at a time (shared.locks.backfill_lock, a session lock gone
    with a killed worker's connection), so a redelivered task resumes where the dead one
    stopped, and one backfill of a source at a time (its run's lock, which the reaper takes
    too). 'busy': another execution holds the backfill; 'wait': another backfill of the source
    runs (try later); 'more': the time budget (kept under the task time limit) ran out with
    chunks left. The caller sends the task again for 'wait' and 'more'.
    """
    engine = engine or get_engine()
    with unit_of_work(engine) as session:
        backfill = session.get(Backfill, backfill_id)
        if backfill is None:
            log.warning("backfill %s does not exist", backfill_id)
            return "missing"
        this_backfill = backfill_lock(backfill_id)
        source_backfills = run_lock("backfill", backfill.source)
    lock = engine.connect()
    try:
        if not try_lock(lock, this_backfill):
            return "busy"
        try:
            if not try_lock(lock, source_backfills):
                return "wait"
            try:
                deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
                return _execute(engine, backfill_id, settings, deadline)
            finally:
                unlock(lock, source_backfills)
        finally:
            unlock(lock, this_backfill)
    finally:
        lock.close()


def _execute(engine: Engine, backfill_id: int, settings: Settings,
             deadline: float | None) -> str:
    with unit_of_work(engine) as session:
        backfill = session.get(Backfill, backfill_id)
        assert backfill is not None
        _start(session, backfill)
        coins = {c["id"]: c for c in backfill.assets}
        run_id = backfill.run_id
    writer = BatchWriter("coingecko", run_id, load_aliases(settings.asset_aliases_file),
                         thresholds=_thresholds(settings))
    limiter = ShareLimiter(settings)
    try:
        first = True
        while True:
            # At least one chunk per execution, so a tiny budget still moves forward.
            if not first and deadline is not None and time.monotonic() > deadline:
                return "more"
            first = False
            with unit_of_work(engine) as session:
                chunk = _next_chunk(session, backfill_id, settings.max_task_attempts)
                if chunk is None:
                    break
                session.execute(_CLAIM, {"id": chunk.id})
                work = (chunk.id, chunk.coin_id, chunk.window_start, chunk.window_end)
            _run_chunk(engine, writer, limiter, settings, backfill_id, run_id, coins, work)
    finally:
        limiter.close()
    return finish_backfill(engine, backfill_id)


def _run_chunk(engine: Engine, writer: BatchWriter, limiter: ShareLimiter, settings: Settings,
               backfill_id: int, run_id: int, coins: dict[str, dict[str, str]],
               work: tuple[int, str, Any, Any]) -> None:
    """Fetch one chunk and commit its rows, checkpoint and done state together."""
    chunk_id, coin_id, start, end = work
    events: dict[str, float] = defaultdict(float)

    def on_event(name: str, amount: float) -> None:
        events[name] += amount

    client = make_client(settings, limiter, on_event)
    try:
        body = fetch_window(client, settings, coin_id, start, end)
    except SourceError as exc:
        message = public_error(exc, "coingecko")
        log.warning("backfill %s chunk %s failed: %s", backfill_id, chunk_id, message)
        with unit_of_work(engine) as session:
            session.execute(_FAILED, {"id": chunk_id, "error": message})
            record_progress(session, run_id, events)
        return
    finally:
        client.session.close()  # the limiter stays open: it serves the next chunks
    batch = chunk_batch(coins[coin_id], chunk_id, backfill_id, body, start, end)
    with unit_of_work(engine) as session:
        result = writer.write(session, batch, None)
        session.execute(_DONE, {"id": chunk_id, "points": len(batch.quotes),
                                "inserted": result.inserted})
        record_progress(session, run_id, events)


def finish_backfill(engine: Engine, backfill_id: int) -> str:
    """Close the backfill, its run and job from the chunks' states; returns the status."""
    with unit_of_work(engine) as session:
        rows = session.execute(text(
            "SELECT status, count(*) FROM backfill_chunks WHERE backfill_id = :id "
            "GROUP BY status"), {"id": backfill_id}).all()
        counts = {status: int(n) for status, n in rows}
        done, total = counts.get("done", 0), sum(counts.values())
        status = ("succeeded" if done == total else "partial" if done else "failed")
        error = None if status == "succeeded" else f"{total - done} of {total} chunks failed"
        backfill = session.get(Backfill, backfill_id)
        assert backfill is not None
        end_run(session, backfill.run_id, status, error)
        # The job stands for this one run: it ends as the run does (no normalize to wait for).
        for row in (backfill, session.get(Job, backfill.job_id)):
            if row is not None:
                row.status, row.error, row.finished_at = status, error, now_utc()
    log.info("backfill %s %s (%d of %d chunks done)", backfill_id, status, done, total)
    return status
