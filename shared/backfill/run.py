"""Running a backfill: its chunks one by one, each committed with its checkpoint, resumable."""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from shared.backfill.request import RUN_SUFFIX
from shared.backfill.fetch import ShareLimiter, chunk_batch, fetch_window, make_client
from shared.models import Backfill, BackfillChunk
from shared.config import Settings
from shared.db import get_engine, unit_of_work
from shared.errors import SourceError, public_error
from shared.identity.resolve import load_aliases
from shared.ingest.batch_writer import BatchWriter
from shared.quality.checks import QualityThresholds
from shared.ingest.execute import release_source_lock, try_source_lock

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
_RUN_COUNTERS = text("""
UPDATE runs SET http_requests = http_requests + :requests, http_retries = http_retries + :retries,
    rate_limit_waits = rate_limit_waits + :waits WHERE id = :run
""")


def _thresholds(settings: Settings) -> QualityThresholds:
    """Every quality check but staleness: a historical series is old by design."""
    thresholds = QualityThresholds.from_settings(settings)
    return replace(thresholds, stale_seconds={**thresholds.stale_seconds, "coingecko": 0})


def _start(session: Session, backfill: Backfill) -> None:
    """Mark the backfill, its run and job running (we hold the source's backfill lock).

    Another running run of the same name has no live execution (we hold its lock): that
    backfill was interrupted and will resume, so its run goes back to queued.
    """
    params = {"id": backfill.id, "run": backfill.run_id, "job": backfill.job_id,
              "source": f"{backfill.source}{RUN_SUFFIX}"}
    session.execute(text("UPDATE runs SET status = 'queued' WHERE source = :source "
                         "AND status = 'running' AND id <> :run"), params)
    for table, key in (("backfills", "id"), ("runs", "run"), ("jobs", "job")):
        session.execute(text(
            f"UPDATE {table} SET status = 'running', finished_at = NULL, error = NULL, "
            f"started_at = coalesce(started_at, now()) WHERE id = :{key}"), params)


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

    One execution per backfill at a time (a session advisory lock, gone with a killed
    worker's connection), so a redelivered task resumes where the dead one stopped. 'busy':
    another execution holds it; 'wait': another backfill of the source runs (try later);
    'more': the time budget (kept under the task time limit) ran out with chunks left. The
    caller sends the task again for 'wait' and 'more'.
    """
    engine = engine or get_engine()
    with unit_of_work(engine) as session:
        backfill = session.get(Backfill, backfill_id)
        if backfill is None:
            log.warning("backfill %s does not exist", backfill_id)
            return "missing"
        run_source = f"{backfill.source}{RUN_SUFFIX}"
    lock = engine.connect()
    try:
        if not try_source_lock(lock, f"backfill.{backfill_id}"):
            return "busy"
        try:
            # One backfill of a source at a time (the lock the reaper checks for its runs).
            if not try_source_lock(lock, run_source):
                return "wait"
            try:
                deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
                return _execute(engine, backfill_id, settings, deadline)
            finally:
                release_source_lock(lock, run_source)
        finally:
            release_source_lock(lock, f"backfill.{backfill_id}")
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
            _count(session, run_id, events)
        return
    finally:
        client.session.close()  # the limiter stays open: it serves the next chunks
    batch = chunk_batch(coins[coin_id], chunk_id, backfill_id, body, start, end)
    with unit_of_work(engine) as session:
        result = writer.write(session, batch, None)
        session.execute(_DONE, {"id": chunk_id, "points": len(batch.quotes),
                                "inserted": result.inserted})
        _count(session, run_id, events)


def _count(session: Session, run_id: int, events: dict[str, float]) -> None:
    session.execute(_RUN_COUNTERS, {
        "run": run_id, "requests": int(events.get("http_requests", 0)),
        "retries": int(events.get("http_retries", 0)),
        "waits": int(events.get("rate_limit_waits", 0))})


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
        session.execute(text(
            "UPDATE backfills SET status = :s, error = :e, finished_at = now() WHERE id = :id"),
            {"s": status, "e": error, "id": backfill_id})
        for table, column in (("runs", "run_id"), ("jobs", "job_id")):
            session.execute(text(
                f"UPDATE {table} SET status = :s, error = :e, finished_at = now() "
                f"WHERE id = (SELECT {column} FROM backfills WHERE id = :id)"),
                {"s": status, "e": error, "id": backfill_id})
    log.info("backfill %s %s (%d of %d chunks done)", backfill_id, status, done, total)
    return status
