"""Celery tasks: thin transport around shared.ingest.execute and shared.jobs."""
from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Ignore

from shared import task_names
from shared.config import SOURCES, get_settings
from shared.db import get_engine, unit_of_work
from shared.jobs.close import finalize_job, reap_stale_runs
from shared.jobs.schedule import submit_tick_job, tick_time
from shared.notify import configured_targets, request_evaluation
from shared.ingest.execute import ExtractFailed, TransientDatabaseError, execute_run, run_outcome
from shared.storage.compaction import compact
from shared.storage.partitions import maintain
from worker.notify_tasks import storage_upkeep
from shared.storage.retention import expire

log = logging.getLogger(__name__)

# Normalize waits for stragglers (a redelivered header task) this long before leaving the
# job to the reaper.
NORMALIZE_RETRY_SECONDS = 2
NORMALIZE_MAX_RETRIES = 300


def _evaluate_notifications(app: Any, run_id: int | None = None) -> None:
    """Ask for notify.evaluate when a target is configured (beat's tick covers the rest)."""
    if configured_targets(get_settings()):
        request_evaluation(app, run_id)


def _extract(self: Task, run_id: int) -> dict[str, Any]:
    """Run the source's run; the task's state tells its outcome (see README "Data flow").

    Succeeded/skipped: SUCCESS with the run's stored outcome. Failed: FAILURE (ExtractFailed
    naming the run and its error); the chord then calls normalize through its error callback.
    Still running under another live execution (a duplicate delivery): nothing is reported,
    that execution reports.
    """
    def progress(meta: dict[str, Any]) -> None:
        # The result backend for `AsyncResult`/`celery result`; an event for Flower, which
        # follows events only (a `task-progress` event reads there as state PROGRESS).
        self.update_state(state="PROGRESS", meta=meta)
        self.send_event("task-progress", **meta)

    engine = get_engine()
    try:
        execute_run(int(run_id), self.request.id, get_settings(), engine, on_progress=progress)
        outcome = run_outcome(engine, int(run_id))
    except TransientDatabaseError as exc:
        # The run stays 'running'; the retry resumes it from the committed checkpoint.
        raise self.retry(exc=exc, countdown=min(60, 2 ** self.request.retries), max_retries=8)
    if outcome["status"] not in ("queued", "running"):
        # After the run's commit; a quick enqueue that never raises: no receiver holds a run.
        _evaluate_notifications(self.app, int(run_id))
    if outcome["status"] == "failed":
        raise ExtractFailed(f"run {run_id} ({outcome['source']}) failed: {outcome['error']}")
    if outcome["status"] in ("queued", "running"):
        raise Ignore()
    return outcome


def _register_extract(source: str) -> None:
    # `throws`: a failed run is an expected outcome, already logged by shared.ingest.execute
    # with its detail; Celery records FAILURE and logs one INFO line instead of an ERROR
    # traceback.
    shared_task(
        name=task_names.extract(source), bind=True, acks_late=True,
        reject_on_worker_lost=True, throws=(ExtractFailed,),
    )(_extract)


for _source in SOURCES:
    _register_extract(_source)


@shared_task(name=task_names.NORMALIZE, bind=True, acks_late=True, max_retries=None)
def normalize(self: Task, _results: Any, job_id: int) -> str | None:
    """Close the job: the chord callback after its extract tasks, and their error callback.

    Named `etl.normalize` after the design's normalize chord; the normalizing itself (raw
    records into quotes, published) is done by each batch as it commits. What is left is the
    cross-source step, shared.jobs.close.finalize_job: once every run is terminal (checked in
    PostgreSQL, not in the chord's results) it sets the job's status from its runs and records
    their run anomalies. A run still active (a redelivered extract task) makes it retry, and
    after NORMALIZE_MAX_RETRIES it leaves the job to the reaper.
    """
    with unit_of_work(get_engine()) as session:
        status = finalize_job(session, int(job_id))
    if status is None:
        if self.request.retries >= NORMALIZE_MAX_RETRIES:
            log.warning("job %s still has active runs; leaving it to the reaper", job_id)
            return None
        raise self.retry(countdown=NORMALIZE_RETRY_SECONDS, max_retries=NORMALIZE_MAX_RETRIES)
    _evaluate_notifications(self.app)  # the job is closed (committed): its sources' states settle
    return status


@shared_task(name=task_names.SCHEDULE_TICK, acks_late=True, ignore_result=True)
def schedule_tick(scheduled_at: str | None = None) -> int:
    """Create the tick's incremental job for every enabled source and enqueue it, unless
    another message of the same tick (a second beat's) did: its job id either way."""
    settings = get_settings()
    # Beat names the tick when it sends it; a message without (sent by hand) is this moment's.
    tick = scheduled_at or tick_time(settings.etl_schedule_seconds)
    # A broker that is down fails the job (JobNotQueued, raised on): it never stays queued.
    with unit_of_work(get_engine()) as session:
        job = submit_tick_job(session, schedule_tick.app, settings.enabled_sources, tick).job
    return job.id


@shared_task(name=task_names.REAP_STALE_RUNS, acks_late=True, ignore_result=True)
def reap() -> dict[str, int]:
    """Fail runs whose worker is gone; close jobs whose normalize never came."""
    engine = get_engine()
    with unit_of_work(engine) as session:
        reaped = reap_stale_runs(session, engine, get_settings())
    if any(reaped.values()):  # runs failed as lost: their sources may be failing now
        _evaluate_notifications(reap.app)
    return reaped


@shared_task(name=task_names.MAINTAIN_PARTITIONS, acks_late=True, ignore_result=True)
def maintain_partitions() -> dict[str, int]:
    """Create the time partitions of the next weeks (shared.storage.partitions), expire those
    past the retention settings (shared.storage.retention), then pack a closed week's key
    (shared.storage.compaction): how many of each."""
    created = maintain(get_engine())
    storage_upkeep()  # hourly too: counts folded, size sampled, budget checked
    dropped = expire(get_engine(), get_settings())
    compacted = compact(get_engine())
    return {**{table: len(names) for table, names in created.items()},
            **{f"{table}_dropped": len(names) for table, names in dropped.items()},
            "quotes_compacted": len(compacted)}
