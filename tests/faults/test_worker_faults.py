"""Worker faults (docs/faults.md F1, F3, F5, F6) and FAIL_AFTER_N_RECORDS resume, real workers."""
from __future__ import annotations

import signal
import time
from typing import Any

from sqlalchemy import text

import pytest

from tests.conftest import count
from tests.faults.conftest import (
    COINS, ROWS, SWEEPER_ENV, Fault, unpublished_quotes, worker_children,
)

pytestmark = pytest.mark.faults


def _run_row(fault: Fault, job_id: int) -> dict[str, Any]:
    (run,) = fault.client.get(f"/jobs/{job_id}").get_json()["runs"]
    return run


def test_f1_child_killed_mid_source_resumes_from_checkpoint(
    fault: Fault, fault_worker: Any
) -> None:
    worker = fault_worker(concurrency=1)
    job_id = fault.post_job()
    (child,) = worker_children(worker)
    fault.pause_mid_run(child.suspend, ROWS // 4)
    child.kill()  # SIGKILL the pool child, frozen mid-run
    fault.assert_resumed_once(job_id)


def test_f3_whole_worker_killed_and_restarted(fault: Fault, fault_worker: Any) -> None:
    first = fault_worker(concurrency=1)
    job_id = fault.post_job()
    committed = fault.pause_mid_run(lambda: first.kill(signal.SIGSTOP), ROWS // 4)
    first.kill(signal.SIGKILL)
    first.proc.wait(10)
    assert count(fault.engine, "quotes") == committed  # nothing moved while it was frozen
    # The dead run's committed batches are served already: each published at its commit.
    assert unpublished_quotes(fault.engine) == []
    assert count(fault.engine, "current_quotes") == COINS
    # The message comes back after the new worker's visibility timeout + a sweep.
    fault_worker(SWEEPER_ENV, concurrency=1)
    fault.assert_resumed_once(job_id)


def test_f5_task_that_kills_its_worker_every_time_stops_at_the_cap(
    fault: Fault, fault_worker: Any
) -> None:
    worker = fault_worker({"FAIL_AFTER_N_RECORDS_CSV": "300", "FAIL_MODE": "kill",
                           "ETL_MAX_TASK_ATTEMPTS": "3"}, concurrency=1)
    job = fault.wait_job(fault.post_job())
    assert job["status"] == "failed"
    run = job["runs"][0]
    assert run["status"] == "failed" and "gave up after 3 attempts" in run["error"]
    assert run["attempts"] == 4  # three that died, the fourth refused to start
    # Each death happened after its batch committed: 300, then one more row per attempt.
    assert count(fault.engine, "quotes") == 302
    worker.stop()
    fault_worker(concurrency=1)  # without the fault: the next run resumes at row 303
    resumed = fault.wait_job(fault.post_job())
    assert resumed["status"] == "succeeded"
    assert resumed["runs"][0]["fetched"] == ROWS - 302
    fault.assert_invariants()
    fault.assert_clean_rerun_adds_nothing()


def test_f6_worker_paused_past_visibility_timeout_is_harmless(
    fault: Fault, fault_worker: Any
) -> None:
    # The paused worker's own limits are long (a hard time limit would otherwise kill the task
    # on SIGCONT); the second worker sweeps with a short visibility timeout (SWEEPER_ENV).
    paused = fault_worker({"ETL_TASK_TIME_LIMIT": "120", "ETL_TASK_SOFT_TIME_LIMIT": "110",
                           "CELERY_VISIBILITY_TIMEOUT": "150"}, concurrency=1)
    job_id = fault.post_job()
    committed = fault.pause_mid_run(lambda: paused.kill(signal.SIGSTOP), ROWS // 5)
    with fault.engine.connect() as conn:
        task_id = conn.execute(text("SELECT celery_task_id FROM runs WHERE job_id = :j"),
                               {"j": job_id}).scalar_one()
    try:
        # A second worker gets the redelivered message once the visibility timeout passes; the
        # paused execution still holds the source lock, so the duplicate must do nothing. Wait
        # for the duplicate to have run (not for a guessed number of seconds): then nothing
        # may have changed.
        second = fault_worker(SWEEPER_ENV, concurrency=1)
        deadline = time.monotonic() + int(SWEEPER_ENV["CELERY_VISIBILITY_TIMEOUT"]) + 60
        while f"[{task_id}] ignored" not in second.log_text():
            assert time.monotonic() < deadline, second.log_text()[-3000:]
            time.sleep(0.25)
        assert count(fault.engine, "quotes") == committed
        assert _run_row(fault, job_id)["status"] == "running"
        # Normalize may have been fired by the duplicate, but the job is not closed early.
        assert fault.client.get(f"/jobs/{job_id}").get_json()["status"] == "running"
    finally:
        paused.kill(signal.SIGCONT)
    job = fault.wait_job(job_id)
    assert job["status"] == "succeeded", job
    run = job["runs"][0]
    assert run["attempts"] == 1 and run["fetched"] == ROWS
    assert job["finished_at"] >= run["finished_at"]
    fault.assert_invariants()
    fault.assert_clean_rerun_adds_nothing()


def test_fail_after_n_records_then_resume_equals_a_clean_run(
    fault: Fault, fault_worker: Any
) -> None:
    worker = fault_worker({"FAIL_AFTER_N_RECORDS": "1000", "ETL_BATCH_DELAY_SECONDS": "0"})
    job = fault.wait_job(fault.post_job())
    assert job["status"] == "failed"
    assert "FAIL_AFTER_N_RECORDS=1000" in job["runs"][0]["error"]
    assert count(fault.engine, "quotes") == 1000
    worker.stop()
    fault_worker({"ETL_BATCH_DELAY_SECONDS": "0"})
    job = fault.wait_job(fault.post_job())
    assert job["status"] == "succeeded"
    assert job["runs"][0]["fetched"] == ROWS - 1000
    fault.assert_invariants()
    fault.assert_clean_rerun_adds_nothing()
