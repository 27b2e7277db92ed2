"""Overlap: two beats and 20 parallel POSTs (F19), double submit (F21); future checkpoint (F30)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from shared.config import Settings
from tests.conftest import ROOT, count
from tests.faults.conftest import (
    ROWS, Fault, freeze_source_run, wait_broker_drained, write_big_csv,
)
from tests.helpers.csv_runs import run_csv

pytestmark = pytest.mark.faults


class ActiveRunSampler(threading.Thread):
    """Records the most runs of one source ever seen `running` at the same moment."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(daemon=True)
        self.engine, self.max_active, self.stop_event = engine, 0, threading.Event()

    def run(self) -> None:
        """Sample every 50 ms."""
        while not self.stop_event.is_set():
            with self.engine.connect() as conn:
                most = conn.execute(text(
                    "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM runs "
                    "WHERE status = 'running' GROUP BY source) s")).scalar_one()
            self.max_active = max(self.max_active, int(most))
            self.stop_event.wait(0.05)


def test_f19_two_beats_and_20_parallel_posts_keep_one_active_run_per_source(
    fault: Fault, fault_worker: Any, settings: Settings, tmp_path: Path
) -> None:
    from api import create_app

    # The API's own request rate limit would answer 429 to a burst of 20: lift it here, the
    # point is what the workers do with 20 jobs at once.
    app = create_app({"TESTING": True, "RATELIMIT_ENABLED": False}, settings=settings)
    # Long task limits: a CSV run is kept frozen below while the beats tick, and the hard time
    # limit (or a redelivery past the visibility timeout) must not end it meanwhile.
    worker = fault_worker({"ETL_BATCH_DELAY_SECONDS": "0.1", "ETL_TASK_TIME_LIMIT": "120",
                           "ETL_TASK_SOFT_TIME_LIMIT": "110",
                           "CELERY_VISIBILITY_TIMEOUT": "150"}, concurrency=4)
    sampler = ActiveRunSampler(fault.engine)
    sampler.start()
    beat_env = {**worker.env, "ETL_SCHEDULE_SECONDS": "2", "ETL_REAPER_INTERVAL_SECONDS": "600"}
    beat_logs = [tmp_path / f"beat-{i}.log" for i in range(2)]
    beats = []
    for i, log in enumerate(beat_logs):
        with log.open("wb") as out:
            beats.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO",
                 "-s", str(tmp_path / f"beat-{i}")],
                cwd=ROOT, env=beat_env, stdout=out, stderr=subprocess.STDOUT))
    statuses: list[int] = []

    def post() -> None:
        response = app.test_client().post("/jobs", json={"sources": ["csv"]},
                                          headers=fault.auth)
        statuses.append(response.status_code)

    def ticks(log: Path) -> int:
        return log.read_text(errors="replace").count("Sending due task incremental-etl")

    def beat_runs_skipped() -> int:
        return count(fault.engine, "runs r JOIN jobs j ON j.id = r.job_id",
                     "j.trigger = 'beat' AND r.status = 'skipped'")

    try:
        posters = [threading.Thread(target=post) for _ in range(20)]
        for thread in posters:
            thread.start()
        for thread in posters:
            thread.join(30)
        assert statuses == [202] * 20
        # Several ticks of both beats while a run is active, by arrangement: the child
        # executing a CSV run is frozen (its source lock held) until both beats have ticked
        # twice after their start tick and two of their runs have found the source busy.
        frozen = freeze_source_run(fault.engine, worker, "csv")
        try:
            deadline = time.monotonic() + 90
            while min(ticks(log) for log in beat_logs) < 2 or beat_runs_skipped() < 2:
                assert time.monotonic() < deadline, (
                    [ticks(log) for log in beat_logs], beat_runs_skipped(),
                    [log.read_text(errors="replace")[-2000:] for log in beat_logs])
                time.sleep(0.2)
        finally:
            frozen.resume()
    finally:
        for beat in beats:
            beat.terminate()
        for beat in beats:
            beat.wait(10)
    try:
        # Ticks sent just before the beats stopped may still be on their way to a job.
        wait_broker_drained(fault.engine, fault.redis_url, timeout=180)
        fault.assert_invariants(deadline=180)
    finally:
        sampler.stop_event.set()
        sampler.join(5)
    assert sampler.max_active == 1
    # 20 posts + the ticks: the start tick and the first due tick were sent before the second
    # due tick was logged (beat logs a tick just before sending it, so the last one logged
    # may have been cut short by the SIGTERM). Both beats send each tick, one job each
    # (shared.jobs.schedule): at most one per due tick of the busier beat and per start tick.
    beat_jobs = count(fault.engine, "jobs", "trigger = 'beat'")
    assert 2 <= beat_jobs <= max(ticks(log) for log in beat_logs) + 2
    assert count(fault.engine, "jobs") == 20 + beat_jobs
    assert count(fault.engine, "runs", "status = 'skipped'") > 0
    with fault.engine.connect() as conn:
        inserted = conn.execute(text("SELECT sum(inserted) FROM runs")).scalar_one()
    assert inserted == ROWS  # every row written by exactly one run
    fault.assert_clean_rerun_adds_nothing()


def test_f30_checkpoint_in_the_future_reads_zero_new_rows_and_succeeds(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    path = write_big_csv(csv_dir, coins=5, days=20)
    assert run_csv(clean_db, settings)["inserted"] == 100
    with clean_db.begin() as conn:
        conn.execute(text(
            "UPDATE checkpoints SET value = jsonb_set(value, '{offset}', '99999999999')"))
    run = run_csv(clean_db, settings)
    # An offset beyond the file cannot be ours: the file is read again, nothing is new.
    assert run["status"] == "succeeded"
    assert (run["inserted"], run["unchanged"]) == (0, 100)
    assert count(clean_db, "quotes") == 100 and count(clean_db, "raw_lines") == 100
    with clean_db.connect() as conn:
        offset = conn.execute(text("SELECT (value->>'offset')::bigint FROM checkpoints")
                              ).scalar_one()
    assert offset == path.stat().st_size  # the state is written again, and sane
    again = run_csv(clean_db, settings)
    assert (again["fetched"], again["inserted"]) == (0, 0)


def test_f21_double_submit_with_one_idempotency_key_makes_one_job(
    clean_db: Engine, settings: Settings, auth_headers: dict[str, str], redis_url: str
) -> None:
    from api import create_app
    from tests.conftest import queued_messages

    app = create_app({"TESTING": True, "RATELIMIT_ENABLED": False}, settings=settings)
    answers: list[tuple[int, int]] = []
    barrier = threading.Barrier(20)

    def post() -> None:
        barrier.wait()
        response = app.test_client().post(
            "/jobs", json={"sources": ["csv"]},
            headers={**auth_headers, "Idempotency-Key": "double-submit-1"})
        body = response.get_json()
        answers.append((response.status_code, body.get("id", body.get("message"))))

    threads = [threading.Thread(target=post) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 20
    assert len({job_id for _, job_id in answers}) == 1
    assert sorted(status for status, _ in answers) == [200] * 19 + [202]
    assert count(clean_db, "jobs") == 1 and count(clean_db, "runs") == 1
    # Enqueued once, by the request that created it, on the CSV queue.
    assert queued_messages(redis_url) == queued_messages(redis_url, "csv") == 1
