"""Redis Sentinel failover mid-job (F36-F38): the master killed, or switched over, under a run.

Each case starts its own master, replica and three Sentinels (tests/faults/sentinel.py), a real
worker (and beat, for the reaper) and the API, all given only the Sentinels' URL.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import Engine

from shared.config import load_settings
from tests.conftest import BROKER_PREFIX, ROOT, TEST_TOKEN, WorkerProcess, count
from tests.faults.conftest import (
    FAULT_ENV, ROWS, CheckpointWatcher, Fault, freeze_source_run, wait_broker_drained,
    write_big_csv,
)
from tests.faults.sentinel import DOWN_AFTER_MS, SentinelCluster
from tests.helpers.waiting import poll
from tests.upstream import ReplayUpstream, max_requests_in_window

pytestmark = pytest.mark.faults

# The reaper runs every REAPER_SECONDS and fails a run without a heartbeat for STALE_SECONDS
# whose source lock is free: every job must be terminal within their sum (plus slack for a
# loaded box) of the run being able to go on.
REAPER_SECONDS = 2
STALE_SECONDS = 8
TERMINAL_WITHIN = STALE_SECONDS + 2 * REAPER_SECONDS + 20
# An ack lost with the old master's connection: the message comes back from `unacked` after
# the visibility timeout and one restore sweep.
DRAINED_WITHIN = int(FAULT_ENV["CELERY_VISIBILITY_TIMEOUT"]) + 30


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SentinelCluster]:
    """A master, a replica and three Sentinels of this test's own (`down_after_ms` by
    indirect parametrization)."""
    workdir = tmp_path / "sentinel"
    workdir.mkdir()
    started = SentinelCluster(workdir, getattr(request, "param", DOWN_AFTER_MS))
    try:
        yield started.start()
    finally:
        started.stop()


def _fault_on(cluster: SentinelCluster, engine: Engine, csv_dir: Path) -> Fault:
    """The fault harness with the API on the Sentinels (its broker, backend and limits)."""
    from api import create_app

    settings = load_settings({
        "DATABASE_URL": engine.url.render_as_string(hide_password=False), **cluster.env,
        "API_TOKEN": TEST_TOKEN, "CSV_DIR": str(csv_dir), "BROKER_KEY_PREFIX": BROKER_PREFIX})
    client = create_app({"TESTING": True}, settings=settings).test_client()
    watcher = CheckpointWatcher(engine)
    watcher.start()
    master = cluster.master_port()
    assert master is not None
    return Fault(client, engine, cluster.data_url(master),
                 {"Authorization": f"Bearer {TEST_TOKEN}"}, watcher)


def _start_beat(worker: WorkerProcess, tmp_path: Path) -> subprocess.Popen[bytes]:
    """Beat with the worker's environment: its start tick, then the reaper every few seconds."""
    log = (tmp_path / "beat.log").open("wb")
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO",
         "-s", str(tmp_path / "beat-schedule")],
        cwd=ROOT, env=worker.env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return beat


def _all_terminal(engine: Engine) -> bool:
    return not (count(engine, "runs", "status IN ('queued','running')")
                or count(engine, "jobs", "status IN ('queued','running')"))


def _drained(fault: Fault, cluster: SentinelCluster, master: int) -> tuple[int, float]:
    """Wait until the new master holds no queued or unacknowledged message (a lost ack's
    message redelivered and run as a no-op); the messages unacked at first, and the wait."""
    fault.redis_url = cluster.data_url(master)
    with cluster.data(master) as client:
        unacked = int(client.hlen(BROKER_PREFIX + "unacked"))
    started = time.monotonic()
    wait_broker_drained(fault.engine, fault.redis_url, DRAINED_WITHIN)
    return unacked, time.monotonic() - started


@pytest.mark.parametrize("switch", ["kill", "failover"])
def test_f36_f37_master_lost_or_switched_mid_job(
    switch: str, cluster: SentinelCluster, clean_db: Engine, csv_dir: Path,
    worker_factory: Any, tmp_path: Path,
) -> None:
    """F36 (`kill`): the master SIGKILLed; F37 (`failover`): SENTINEL FAILOVER; each while a
    CSV run is frozen mid-way (its worker child stopped, its lock held). The run goes on
    after the promotion: every job terminal within the reaper's bound, each row stored once,
    nothing left queued or unacknowledged on the new master, and a new job succeeds."""
    for path in csv_dir.glob("*.csv"):  # beat's start tick finds no rows: the job is ours
        if path.name != "asset_aliases.csv":
            path.unlink()
    env = {**FAULT_ENV, "CSV_DIR": str(csv_dir), **cluster.env,
           "ETL_REAPER_INTERVAL_SECONDS": str(REAPER_SECONDS),
           "ETL_RUN_STALE_SECONDS": str(STALE_SECONDS), "ETL_SCHEDULE_SECONDS": "3600"}
    worker = worker_factory(env, concurrency=2)
    beat = _start_beat(worker, tmp_path)
    try:
        fault = _fault_on(cluster, clean_db, csv_dir)
        poll(lambda: count(clean_db, "jobs", "status IN ('succeeded','partial','failed',"
                           "'skipped')"), bool, 60, "beat's start tick job")
        write_big_csv(csv_dir)
        job_id = fault.post_job()
        fault.wait_rows(ROWS // 4)
        child = freeze_source_run(clean_db, worker, "csv")
        committed = count(clean_db, "quotes")
        assert committed < ROWS and count(clean_db, "runs", "status = 'running'") == 1
        # Everything the broker holds now (the queued chord body, the unacknowledged
        # extract, the chord's counter) is on the replica before the switch.
        cluster.wait_for(cluster.replicated, 10, "the replica did not catch up")
        switched_at = time.monotonic()
        old = cluster.kill_master() if switch == "kill" else cluster.failover()
        new, promoted_in = cluster.wait_promoted(old)
        child.resume()
        resumed_at = time.monotonic()
        poll(lambda: _all_terminal(clean_db), bool, TERMINAL_WITHIN,
             "every run and job terminal")
        terminal_in = time.monotonic() - resumed_at
        job = fault.wait_job(job_id)
        run = job["runs"][0]
        print(f"\n[{switch}] promoted in {promoted_in:.2f}s (down-after {cluster.down_after_ms} "
              f"ms); "
              f"job {job['status']} {terminal_in:.1f}s after the run resumed; run attempts "
              f"{run['attempts']}, fetched {run['fetched']}, inserted {run['inserted']}; "
              f"{committed} quotes committed before the switch")
        # The run went on through the switch: read once, every row stored once.
        assert job["status"] == "succeeded", job
        assert (run["attempts"], run["fetched"], run["inserted"]) == (1, ROWS, ROWS)
        # Queues and unacked read on the new master: drained (an ack lost with the old
        # connection comes back after the visibility timeout, and is run as a no-op).
        unacked, drained_in = _drained(fault, cluster, new)
        print(f"[{switch}] {unacked} message(s) unacknowledged on the new master, drained in "
              f"{drained_in:.1f}s; attempts after {fault.wait_job(job_id)['runs'][0]['attempts']}")
        fault.assert_invariants()
        assert time.monotonic() - switched_at < 120
        # A job after the switch goes through the new master, API to worker and back.
        fault.assert_clean_rerun_adds_nothing()
        assert "Connected to sentinel://" in worker.log_text()
        # The API's other Redis users follow the master too: /health's broker check, and the
        # read quota's count (its headers come only from a count that reached Redis).
        health = fault.client.get("/health").get_json()
        assert health["checks"]["broker"]["ok"], health
        assert "X-RateLimit-Remaining" in fault.client.get("/jobs").headers
    finally:
        beat.terminate()
        beat.wait(10)
        clean_db.dispose()


QUOTA, PERIOD = 2, 10
# The master stays unreplaced at least this long after the kill: far longer than the run
# takes from the held request's answer to asking for its next slot.
QUOTA_DOWN_AFTER_MS = 3000


@pytest.mark.parametrize("cluster", [QUOTA_DOWN_AFTER_MS], indirect=True)
def test_f38_the_upstream_quota_holds_across_a_failover(
    cluster: SentinelCluster, clean_db: Engine, upstream: ReplayUpstream, worker_factory: Any,
    csv_dir: Path,
) -> None:
    """F38: a CoinGecko run under a quota of QUOTA requests per PERIOD s; its second request is
    held by the replay upstream until the master is killed, and answered at once: the run
    asks for its third slot while no master is there, waits for the promotion (the limiter
    waits out a store that does not answer), and then for the window, whose hits were
    replicated: never more than QUOTA requests in any PERIOD, although the switch took less
    than a PERIOD."""
    upstream.reset(coingecko_total=750)  # 3 full pages and an empty one: 4 requests
    env = {**FAULT_ENV, "CSV_DIR": str(csv_dir), **cluster.env, "ETL_SOURCES": "coingecko",
           "COINGECKO_BASE_URL": upstream.coingecko_base_url,
           "COINGECKO_RATE_LIMIT": str(QUOTA), "COINGECKO_RATE_PERIOD_SECONDS": str(PERIOD),
           "HTTP_TIMEOUT_SECONDS": "60", "HTTP_BACKOFF_MAX_SECONDS": "1"}
    worker = worker_factory(env, concurrency=2)
    fault = _fault_on(cluster, clean_db, csv_dir)
    hold = upstream.add_fault("hold", endpoint="coingecko", page=2, count=1)
    job_id = fault.post_job(["coingecko"])
    upstream.wait_held(hold)
    cluster.wait_for(cluster.replicated, 10, "the replica did not catch up")
    old = cluster.kill_master()
    first = upstream.requests("coingecko")[0]["mono"]
    upstream.release(hold)
    released_after = time.monotonic() - first
    new, promoted_in = cluster.wait_promoted(old)
    promoted_after = time.monotonic() - first
    job = fault.wait_job(job_id, timeout=60)
    times = [entry["mono"] for entry in upstream.requests("coingecko")]
    run = job["runs"][0]
    print(f"\n[quota] released {released_after:.2f}s after the first request, the replica "
          f"promoted {promoted_after:.2f}s after it (down-after {cluster.down_after_ms} ms); "
          f"request times {[round(t - first, 2) for t in times]}; "
          f"waits {run['rate_limit_waits']}")
    assert job["status"] == "succeeded" and run["inserted"] == 750, job
    assert len(times) == 4
    # Not vacuous: with the window lost with the old master, request 3 would have gone at
    # the promotion, well inside the first request's window.
    assert promoted_after < PERIOD - 1
    # A request reaches the server a little after its slot was granted: windows 0.25 s short.
    assert max_requests_in_window(times, PERIOD - 0.25) <= QUOTA, times
    assert times[2] - times[0] >= PERIOD - 0.25
    assert run["rate_limit_waits"] >= 1
    # The third slot was asked for while no master was there, and waited for one.
    assert "rate limiter store unavailable" in worker.log_text()
    assert times[2] > first + promoted_after
    unacked, drained_in = _drained(fault, cluster, new)
    print(f"[quota] {unacked} message(s) unacknowledged on the new master, drained in "
          f"{drained_in:.1f}s")
    fault.assert_invariants(expected_rows=750)
    clean_db.dispose()


def test_f39_one_redis_lost_under_an_unacknowledged_task_leaves_the_worker_running(
    tmp_path: Path, clean_db: Engine, upstream: ReplayUpstream, worker_factory: Any,
    csv_dir: Path,
) -> None:
    """F39: without Sentinel, the same broken connection: one Redis killed (and restarted
    empty) while the worker's main process is live and its task unacknowledged (a CoinGecko
    request held by the replay upstream). kombu 5.7 stopped the worker here
    ("Unrecoverable error: AttributeError"); it must reconnect, finish the run, and take the
    next job; the reaper closes the job whose chord state went with Redis's data."""
    from shared import task_names
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    env = {**FAULT_ENV, "CSV_DIR": str(csv_dir), "REDIS_URL": server.url,
           "ETL_SOURCES": "coingecko", "COINGECKO_BASE_URL": upstream.coingecko_base_url,
           "HTTP_TIMEOUT_SECONDS": "60", "ETL_RUN_STALE_SECONDS": str(STALE_SECONDS)}
    worker = worker_factory(env, concurrency=2)
    settings = load_settings({
        "DATABASE_URL": clean_db.url.render_as_string(hide_password=False),
        "REDIS_URL": server.url, "API_TOKEN": TEST_TOKEN, "CSV_DIR": str(csv_dir),
        "BROKER_KEY_PREFIX": BROKER_PREFIX})
    from api import create_app

    app = create_app({"TESTING": True}, settings=settings)
    fault = Fault(app.test_client(), clean_db, server.url,
                  {"Authorization": f"Bearer {TEST_TOKEN}"}, CheckpointWatcher(clean_db))
    try:
        hold = upstream.add_fault("hold", endpoint="coingecko", count=1)
        job_id = fault.post_job(["coingecko"])
        upstream.wait_held(hold)
        server.kill()
        server.start()
        upstream.release(hold)
        poll(lambda: count(clean_db, "runs", "status = 'succeeded'"), bool, 60, "the run")
        poll(lambda: worker.log_text().count("Connected to redis://"), lambda n: n >= 2, 60,
             "the worker's reconnection")
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_text()[-3000:]
        assert "Unrecoverable error" not in worker.log_text()
        # The reaper (sent by hand here; beat sends it) closes the job whose normalize was
        # lost with Redis's data; a new job runs on the live worker.
        app.extensions["celery"].send_task(task_names.REAP_STALE_RUNS)
        assert fault.wait_job(job_id)["status"] == "succeeded"
        assert fault.wait_job(fault.post_job(["coingecko"]))["status"] == "succeeded"
    finally:
        server.kill()
        clean_db.dispose()
