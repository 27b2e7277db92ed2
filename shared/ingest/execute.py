"""One source's extract run: claim it under its run lock, stream batches, end it terminal."""
from __future__ import annotations

import logging
import os
import signal
import time
from collections import defaultdict
from decimal import Decimal
from typing import Any, Callable

import psycopg2
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import get_engine, session_factory, unit_of_work
from shared.errors import InjectedFailure, public_error
from shared.identity.resolve import load_aliases
from shared.ingest.batch_writer import BatchWriter, LoadState, load_checkpoints
from shared.jobs.close import close_job_of_run
from shared.jobs.lifecycle import end_run, record_progress, start_run
from shared.locks import run_lock, try_lock, unlock
from shared.quality.anomalies import AnomalyThresholds
from shared.quality.checks import QualityThresholds
from shared.models import RUN_COUNTERS, TERMINAL_STATUSES, Run
from shared.ingest.pipeline import read_ahead, write_in_order
from shared.batch.types import Batch
from shared.sources import get_source
from shared.sources.base import RunContext, Source

log = logging.getLogger(__name__)


class TransientDatabaseError(RuntimeError):
    """The database went away mid-run; the task should retry and resume from the checkpoint."""


class ExtractFailed(RuntimeError):
    """The run ended `failed`: raised by the extract task so that its state says so."""


# What a run reports while it is active (throttled): the task turns it into a PROGRESS state.
Progress = Callable[[dict[str, Any]], None]
PROGRESS_INTERVAL_SECONDS = 1.0


def _is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` says the database connection is gone (retry), not that a statement failed.

    Statements on a raw cursor (the bulk writes) raise psycopg2's own errors, unwrapped. Only
    the base classes count: their subclasses (query canceled, ...) are statement errors.
    """
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or _is_bare_connection_error(exc.orig)
    return _is_bare_connection_error(exc)


def _is_bare_connection_error(exc: BaseException | None) -> bool:
    return type(exc) in (psycopg2.OperationalError, psycopg2.InterfaceError)


def execute_run(
    run_id: int, task_id: str | None, settings: Settings, engine: Engine | None = None,
    on_progress: Progress | None = None,
) -> int:
    """Run `run_id` to a terminal state (or leave it to its live owner); returns `run_id`.

    The return value is always the run id so that a redelivered chord member returns the same
    value as the first delivery (docs/faults.md: a different value can fire the chord early).
    """
    engine = engine or get_engine()
    try:
        with unit_of_work(engine) as session:
            run = session.get(Run, run_id)
            if run is None:
                log.warning("run %s does not exist; nothing to do", run_id)
                return run_id
            if run.status in TERMINAL_STATUSES:
                return run_id
            source, lock = run.source, run_lock(run.kind, run.source)
        lock_conn = engine.connect()
    except DBAPIError as exc:
        if _is_connection_error(exc):
            raise TransientDatabaseError(str(exc.orig)) from exc
        raise
    locked = False
    try:
        locked = try_lock(lock_conn, lock)
        if not locked:
            _skip_if_queued(engine, run_id, source)
            return run_id
        claimed = _claim(engine, run_id, task_id, settings)
        if claimed is None:
            return run_id
        records_done, checkpoints = claimed
        _process(engine, run_id, source, settings, records_done, checkpoints, on_progress)
        _close_job(engine, run_id, settings)
        return run_id
    except Exception as exc:
        if _is_connection_error(exc):
            raise TransientDatabaseError(
                str(exc.orig if isinstance(exc, DBAPIError) else exc)) from exc
        raise
    finally:
        if locked:
            try:
                unlock(lock_conn, lock)
            except DBAPIError:
                lock_conn.invalidate()  # the session ended with the server: lock already gone
        lock_conn.close()


def _close_job(engine: Engine, run_id: int, settings: Settings) -> None:
    """Close the run's job now if this was its last run to end (shared.jobs.close).

    Best effort: the chord's callback closes it otherwise, so a failure here is only logged
    (a lost connection still raises, and the task's retry finds the run ended).
    """
    try:
        close_job_of_run(engine, run_id, AnomalyThresholds.from_settings(settings))
    except Exception as exc:
        if _is_connection_error(exc):
            raise
        log.warning("run %s: job not closed at the run's end (%s); normalize closes it",
                    run_id, type(exc).__name__, exc_info=exc)


def _skip_if_queued(engine: Engine, run_id: int, source: str) -> None:
    """Another execution holds the source: a queued run loses; our own running run is theirs."""
    with unit_of_work(engine) as session:
        if end_run(session, run_id, "skipped", f"another {source} run was active",
                   when=("queued",)):
            log.info("run %s (%s) skipped: another run of the source is active", run_id, source)


def _claim(engine: Engine, run_id: int, task_id: str | None, settings: Settings
           ) -> tuple[int, dict[str, dict[str, Any]]] | None:
    """Mark the run running (we hold its lock): (records done, the source's checkpoints);
    None when it must not run. The checkpoints are read in the same transaction (the lock
    keeps every other execution of the source from moving them)."""
    with unit_of_work(engine) as session:
        run = session.get(Run, run_id, with_for_update=True)
        if run is None or run.status in TERMINAL_STATUSES:
            return None
        run.attempts += 1
        if run.attempts > settings.max_task_attempts:
            end_run(session, run_id, "failed",
                    f"gave up after {settings.max_task_attempts} attempts "
                    "(the worker was lost every time)")
            return None
        start_run(session, run_id, task_id=task_id)
        return int(run.fetched), load_checkpoints(session, run.source)


def _process(
    engine: Engine, run_id: int, source: str, settings: Settings, records_done: int,
    checkpoints: dict[str, dict[str, Any]], on_progress: Progress | None = None,
) -> None:
    events: dict[str, float] = defaultdict(float)
    report = _Throttled(engine, run_id, on_progress)

    def on_event(name: str, amount: float) -> None:
        events[name] += amount

    make_session = session_factory(engine)
    ctx = RunContext(
        run_id=run_id, source=source, settings=settings, checkpoints=checkpoints,
        on_event=on_event, max_records=settings.fail_after_for(source),
        records_done=records_done,
    )
    writer = BatchWriter(source, run_id, load_aliases(settings.asset_aliases_file),
                         thresholds=QualityThresholds.from_settings(settings))
    session: Session = make_session()
    extractor = get_source(source, settings)
    try:
        if _can_read_ahead(extractor, ctx):
            _write_pipelined(engine, writer, settings, ctx, extractor, report)
        else:
            _write_serially(session, writer, settings, ctx, extractor, events, report)
        # A source that could not read some of its input (CSV: unreadable files) says why;
        # what it did read is committed and is published like a succeeded run's.
        partial = extractor.partial_reason
        _end(session, run_id, "partial" if partial else "succeeded", partial, events)
    except BaseException as exc:
        session.rollback()
        if _is_connection_error(exc):
            raise
        # The run keeps a short, typed text the API may serve; the detail (SQL, traceback)
        # goes to this worker's log only (redacted there by the logging filter).
        message = public_error(exc, source)
        log.warning("run %s (%s) failed: %s", run_id, source, message, exc_info=exc)
        try:
            _end(session, run_id, "failed", message, events)
        except DBAPIError:
            log.exception("could not record the failure of run %s", run_id)
        if not isinstance(exc, Exception):
            raise  # SystemExit / KeyboardInterrupt: let the worker stop
    finally:
        session.close()


class _Throttled:
    """Calls `on_progress` with the run's counters at most once per interval, the first time
    one interval after the run started: a shorter run reports only its end (each report is a
    read of the run and a result-backend write, on the thread that hands out the batches)."""

    def __init__(self, engine: Engine, run_id: int, on_progress: Progress | None) -> None:
        self.engine, self.run_id, self.on_progress = engine, run_id, on_progress
        self.last = time.monotonic()

    def __call__(self, records_read: int) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL_SECONDS:
            return
        self.last = now
        # Best effort: a report that cannot be read or sent (Redis restarting, say) must not
        # fail the run; the next batch tries again.
        try:
            # Committed counters (the batches written so far), plus what was read.
            meta = run_outcome(self.engine, self.run_id)
            meta["records_read"] = records_read
            self.on_progress(meta)
        except Exception as exc:  # noqa: BLE001 - see above
            log.warning("run %s: progress not reported (%s)", self.run_id, type(exc).__name__)


def run_outcome(engine: Engine, run_id: int) -> dict[str, Any]:
    """The run's status, error and counters as stored: what the extract task reports.

    Read back from PostgreSQL, so a redelivered task reports what the first delivery did
    (docs/faults.md: chord members must return the same value every time).
    """
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT source, kind, status, error, " + ", ".join(RUN_COUNTERS)
                     + " FROM runs WHERE id = :id"), {"id": run_id}).mappings().first()
    except DBAPIError as exc:
        if _is_connection_error(exc):
            raise TransientDatabaseError(str(exc.orig)) from exc
        raise
    if row is None:
        return {"run_id": run_id, "status": "missing"}
    # JSON for the result backend and Flower: the seconds waited are a Decimal column.
    return {"run_id": run_id, **{k: float(v) if isinstance(v, Decimal) else v
                                 for k, v in row.items()}}


def _inject_failure(settings: Settings, ctx: RunContext) -> None:
    """FAIL_AFTER_N_RECORDS was reached: kill the worker or fail the run, as configured."""
    if settings.fail_mode == "kill":
        log.warning("FAIL_MODE=kill: killing worker process %s", os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFailure(
        f"FAIL_AFTER_N_RECORDS={ctx.max_records} reached after {ctx.records_done} records"
    )


def _can_read_ahead(extractor: Source, ctx: RunContext) -> bool:
    """Whether the source's batches may be read (and written) ahead of the commits."""
    # FAIL_AFTER_N_RECORDS cuts batches by what was committed, so it rules out reading ahead.
    return extractor.read_ahead and ctx.max_records is None


def _write_serially(
    session: Session, writer: BatchWriter, settings: Settings, ctx: RunContext,
    extractor: Source, events: dict[str, float], report: Callable[[int], None],
) -> None:
    """Write and commit each batch before the source reads the next."""
    state = LoadState()
    for batch in extractor.batches(ctx):
        for name, amount in batch.stats.items():
            ctx.on_event(name, amount)
        writer.write(session, batch, ctx.checkpoints.get(batch.checkpoint_key), state)
        _flush_events(session, writer.run_id, events)
        session.commit()
        ctx.checkpoints[batch.checkpoint_key] = batch.checkpoint
        ctx.records_done += batch.record_count
        report(ctx.records_done)
        if settings.batch_delay_seconds:
            time.sleep(settings.batch_delay_seconds)
        if ctx.max_records is not None and ctx.records_done >= ctx.max_records:
            _inject_failure(settings, ctx)


def _write_pipelined(
    engine: Engine, writer: BatchWriter, settings: Settings, ctx: RunContext,
    extractor: Source, report: Callable[[int], None],
) -> None:
    """Read ahead, and write two batches at once on two connections (shared.ingest.pipeline)."""

    def write(session: Session, batch: Batch, previous: dict[str, Any] | None,
              state: LoadState, wait_turn: Callable[[], None]) -> None:
        writer.write(session, batch, previous, state, wait_turn=wait_turn)
        _flush_events(session, writer.run_id, dict(batch.stats))

    def prepare(batch: Batch) -> Batch:
        return writer.prepare(engine, batch)

    def after_submit(batch: Batch) -> None:
        ctx.records_done += batch.record_count
        report(ctx.records_done)
        if settings.batch_delay_seconds:
            time.sleep(settings.batch_delay_seconds)

    write_in_order(engine, read_ahead(extractor.batches(ctx), prepare=prepare),
                   write, ctx.checkpoints, after_submit)


def _flush_events(session: Session, run_id: int, events: dict[str, float]) -> None:
    if events:
        record_progress(session, run_id, events)
        events.clear()


def _end(
    session: Session, run_id: int, status: str, error: str | None, events: dict[str, float]
) -> None:
    _flush_events(session, run_id, events)
    end_run(session, run_id, status, error, when=("running",))
    session.commit()
