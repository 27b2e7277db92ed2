"""No overlap (F19: two beats + 20 parallel POST /jobs) and a checkpoint in the future (F30)."""
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
from tests.faults.conftest import ROWS, Fault, write_big_csv
from tests.shared.test_csv_pipeline import run_csv

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
    worker = fault_worker({"ETL_BATCH_DELAY_SECONDS": "0.1"}, concurrency=4)
    sampler = ActiveRunSampler(fault.engine)
    sampler.start()
    beat_env = {**worker.env, "ETL_SCHEDULE_SECONDS": "2", "ETL_REAPER_INTERVAL_SECONDS": "600"}
    beats = [
        subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO",
             "-s", str(tmp_path / f"beat-{i}")],
            cwd=ROOT, env=beat_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(2)
    ]
    statuses: list[int] = []

    def post() -> None:
        response = app.test_client().post("/jobs", json={"sources": ["csv"]},
                                          headers=fault.auth)
        statuses.append(response.status_code)

    try:
        posters = [threading.Thread(target=post) for _ in range(20)]
        for thread in posters:
            thread.start()
        for thread in posters:
            thread.join(30)
        assert statuses == [202] * 20
        time.sleep(6)  # several ticks of both beats while runs are active
    finally:
        for beat in beats:
            beat.terminate()
        for beat in beats:
            beat.wait(10)
    try:
        fault.assert_invariants(deadline=180)
    finally:
        sampler.stop_event.set()
        sampler.join(5)
    assert sampler.max_active == 1
    assert count(fault.engine, "jobs") >= 22  # 20 posts + at least one start tick per beat
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
    import redis

    from api import create_app
    from tests.conftest import QUEUE_KEY

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
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(QUEUE_KEY) == 1  # enqueued once, by the request that created it
    finally:
        client.close()
