"""Server faults: PostgreSQL crash (F10), Redis restart (F14), Redis restart losing data (F15).

Each case starts its own server instance under a temporary folder and crashes that one, never
the shared PostgreSQL/Redis of the machine.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from scripts import stack
from shared.config import load_settings
from tests.conftest import BROKER_PREFIX, ROOT, TEST_TOKEN, count
from tests.faults.conftest import FAULT_ENV, ROWS, CheckpointWatcher, Fault

pytestmark = pytest.mark.faults


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An append-only Redis of this test's own; yields (var_dir, url)."""
    var_dir = tmp_path / "redis-var"
    url, _stop = stack.start_embedded_redis(var_dir, port=0)
    try:
        yield var_dir, url
    finally:
        stack.stop_embedded_redis(var_dir)


def _fault_on(database_url: str, redis_url: str, csv_dir: Path) -> Fault:
    from api import create_app

    settings = load_settings({"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                              "API_TOKEN": TEST_TOKEN, "CSV_DIR": str(csv_dir),
                              "BROKER_KEY_PREFIX": BROKER_PREFIX})
    client = create_app({"TESTING": True}, settings=settings).test_client()
    engine = create_engine(database_url, pool_pre_ping=True)
    watcher = CheckpointWatcher(engine)
    watcher.start()
    return Fault(client, engine, redis_url, {"Authorization": f"Bearer {TEST_TOKEN}"}, watcher)


def _restart_redis(var_dir: Path, url: str, lose_data: bool,
                   while_down: Callable[[], None] | None = None) -> None:
    """Stop (or kill, losing its data) a private Redis, call `while_down`, start it again."""
    port = make_url(url.replace("redis://", "postgresql://")).port
    pid = int((var_dir / "redis" / "redis.pid").read_text())
    if lose_data:
        os.kill(pid, signal.SIGKILL)
        while stack._pid_alive(pid):
            time.sleep(0.05)
        for path in (var_dir / "redis").rglob("*.aof*"):
            if path.is_file():
                path.unlink()
        for path in (var_dir / "redis").rglob("*.rdb"):
            path.unlink()
    else:
        stack.stop_embedded_redis(var_dir)  # SIGTERM: Redis flushes its append-only file
    if while_down is not None:
        while_down()
    time.sleep(1.0)
    stack.start_embedded_redis(var_dir, port=port)


def test_f10_postgres_crash_mid_batch_then_restart(
    own_postgres: tuple[Path, str], redis_url: str, clean_db: Any, csv_dir: Path,
    worker_factory: Any, fault_env_csv: dict[str, str],
) -> None:
    from tests.faults.conftest import write_big_csv

    var_dir, db_url = own_postgres
    write_big_csv(csv_dir)
    fault = _fault_on(db_url, redis_url, csv_dir)
    worker = worker_factory({**fault_env_csv, "DATABASE_URL": db_url}, concurrency=1)
    job_id = fault.post_job()
    # The crash lands mid-run by arrangement: the worker is frozen mid-run, then PostgreSQL
    # crashes, then the worker runs on into the outage.
    fault.pause_mid_run(lambda: worker.kill(signal.SIGSTOP), ROWS // 4)
    port = make_url(db_url).port
    stack.stop_embedded_postgres(var_dir, mode="immediate")  # crash: no checkpoint, no flush
    worker.kill(signal.SIGCONT)
    time.sleep(3)  # the outage the worker's retries meet (its length, not a race)
    stack.start_embedded_postgres(var_dir, port=port, database="faults")
    fault.assert_resumed_once(job_id)
    fault.engine.dispose()


def test_f14_redis_restart_with_queued_work(
    own_redis: tuple[Path, str], clean_db: Any, csv_dir: Path, worker_factory: Any,
    fault_env_csv: dict[str, str],
) -> None:
    from tests.faults.conftest import write_big_csv

    var_dir, redis_url = own_redis
    write_big_csv(csv_dir)
    fault = _fault_on(str(clean_db.url.render_as_string(hide_password=False)), redis_url,
                      csv_dir)
    job_id = fault.post_job()  # queued while no worker runs
    _restart_redis(var_dir, redis_url, lose_data=False)
    worker = worker_factory({**fault_env_csv, "REDIS_URL": redis_url}, concurrency=1)
    # And again while the run is going, by arrangement: the worker is frozen mid-run while
    # Redis stops, and runs on while it is down.
    fault.pause_mid_run(lambda: worker.kill(signal.SIGSTOP), ROWS // 4)
    _restart_redis(var_dir, redis_url, lose_data=False,
                   while_down=lambda: worker.kill(signal.SIGCONT))
    job = fault.wait_job(job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["runs"][0]["fetched"] == ROWS
    fault.assert_invariants()
    fault.assert_clean_rerun_adds_nothing()
    fault.engine.dispose()  # its pooled connections count against the shared server's limit


def test_f15_redis_restart_with_data_lost_reaper_ends_orphans_next_tick_resumes(
    own_redis: tuple[Path, str], clean_db: Any, csv_dir: Path, worker_factory: Any,
    fault_env_csv: dict[str, str], tmp_path: Path,
) -> None:
    from tests.faults.conftest import write_big_csv

    var_dir, redis_url = own_redis
    write_big_csv(csv_dir)
    db_url = str(clean_db.url.render_as_string(hide_password=False))
    fault = _fault_on(db_url, redis_url, csv_dir)
    job_id = fault.post_job()  # its message is lost with Redis's data
    _restart_redis(var_dir, redis_url, lose_data=True)
    env = {**fault_env_csv, "REDIS_URL": redis_url, "ETL_RUN_STALE_SECONDS": "3",
           "ETL_REAPER_INTERVAL_SECONDS": "1", "ETL_SCHEDULE_SECONDS": "3600",
           "ETL_BATCH_DELAY_SECONDS": "0"}
    worker = worker_factory(env, concurrency=2)
    beat_log = (tmp_path / "beat.log").open("wb")
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO",
         "-s", str(tmp_path / "beat-schedule")],
        cwd=ROOT, env=worker.env | env, stdout=beat_log, stderr=subprocess.STDOUT)
    try:
        lost = fault.wait_job(job_id, timeout=60)
        assert lost["status"] == "failed"
        assert "message was lost" in lost["runs"][0]["error"]
        # Beat's start tick is the next run: it reads everything, once.
        deadline = time.monotonic() + 60
        while not count(fault.engine, "jobs", "trigger = 'beat' AND status = 'succeeded'"):
            assert time.monotonic() < deadline, "the beat job did not finish"
            time.sleep(0.25)
    finally:
        beat.terminate()
        beat.wait(10)
        beat_log.close()
    fault.assert_invariants()
    fault.assert_clean_rerun_adds_nothing()
    fault.engine.dispose()


@pytest.fixture
def fault_env_csv(csv_dir: Path) -> dict[str, str]:
    """The fault-suite worker environment for the CSV copy of this test."""
    return {**FAULT_ENV, "CSV_DIR": str(csv_dir)}


def test_own_servers_are_not_the_shared_ones(own_postgres: tuple[Path, str]) -> None:
    _var, url = own_postgres
    assert make_url(url).port != 5432
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0
    engine.dispose()
