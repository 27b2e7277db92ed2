"""PgBouncer: the API through a transaction pool of 2 server connections under 16 reading threads;
the worker (and `flask etl reap`) refusing a transaction pool, starting on a session pool.

Debian's pgbouncer (.ci/run installs it) in front of the session's test database, on a
loopback port; skipped on a machine without it (`make test` with only Python).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from flask import Flask
from sqlalchemy import Engine, text

from shared.config import Settings
from shared.db import check_pool
from tests.api.helpers import coins_csv
from tests.conftest import ROOT, TEST_TOKEN, WorkerProcess
from tests.helpers.csv_runs import HEADER, only_file, run_csv
from tests.scale.conftest import Load, scale_settings
from tests.scale.pgbouncer import PgBouncer, binary, start_pgbouncer

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.processes]

POOL_SIZE = 2
THREADS = 16
PER_THREAD = 30


@pytest.fixture(scope="module")
def bouncer(database_url: str) -> Iterator[PgBouncer]:
    """pgbouncer in front of the test database: `<db>_tx` (transaction) and `<db>_session`."""
    if binary() is None:
        pytest.skip("no pgbouncer here (.ci/run installs it: apt-get install -y pgbouncer)")
    started = start_pgbouncer(database_url, POOL_SIZE)
    try:
        yield started
    finally:
        started.stop()


def _pool(bouncer: PgBouncer, mode: str) -> dict[str, Any]:
    alias = f"{bouncer.database}_{'tx' if mode == 'transaction' else 'session'}"
    (row,) = [row for row in bouncer.show("POOLS") if row["database"] == alias]
    return row


def test_api_through_a_transaction_pool_of_two_under_concurrent_reads(
    bouncer: PgBouncer, clean_db: Engine, settings: Settings, csv_dir: Path,
    database_url: str, app_factory: Callable[..., Flask]
) -> None:
    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 30))
    assert run_csv(clean_db, settings)["status"] == "succeeded"
    # The API's connections through the transaction pool; its LISTEN straight to PostgreSQL.
    app = app_factory(scale_settings(
        bouncer.url("transaction"), settings.redis_url, csv_dir, settings.broker_key_prefix,
        DATABASE_LISTEN_URL=database_url), DATA_CACHE_MAX_BYTES=0)
    client = app.test_client()
    asset = client.get("/data?symbol=C1").get_json()["data"][0]["asset_id"]
    auth = {"Authorization": f"Bearer {TEST_TOKEN}"}
    xacts_before = sum(row["total_xact_count"] for row in bouncer.show("STATS")
                       if row["database"].endswith("_tx"))
    load = Load(app, ["/data?page_size=50", "/data?symbol=C2&sort=-price_usd", f"/data/{asset}",
                      f"/data/{asset}/history?page_size=5", "/data?format=csv", "/stats",
                      "/jobs", "/runs", "/health/ready", "/data?quality=ok&q=Coin"],
                threads=THREADS)
    peak = {"clients": 0, "servers": 0}
    sampler_done = threading.Event()

    def sample() -> None:
        while not sampler_done.is_set():
            pool = _pool(bouncer, "transaction")
            peak["clients"] = max(peak["clients"], pool["cl_active"] + pool["cl_waiting"])
            peak["servers"] = max(peak["servers"], pool["sv_active"] + pool["sv_idle"]
                                  + pool["sv_used"] + pool["sv_tested"] + pool["sv_login"])
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    load.start()
    try:
        deadline = time.monotonic() + 240
        while load.total() < THREADS * PER_THREAD and time.monotonic() < deadline:
            time.sleep(0.1)
        # Writes through the same pool meanwhile: a job queued, then read back.
        for _ in range(5):
            posted = client.post("/jobs", json={"sources": ["csv"]}, headers=auth)
            assert posted.status_code in (200, 202), posted.get_json()
            assert client.get(f"/jobs/{posted.get_json()['id']}").status_code == 200
    finally:
        load.stop()
        sampler_done.set()
        sampler.join(5)
    answered = load.total()
    assert load.failures == [] and answered >= THREADS * PER_THREAD, (answered, load.failures)
    pool = _pool(bouncer, "transaction")
    assert pool["pool_mode"] == "transaction"
    # Never more than the pool's two server connections, for many more clients.
    assert peak["servers"] <= POOL_SIZE and peak["clients"] > POOL_SIZE, peak
    xacts = sum(row["total_xact_count"] for row in bouncer.show("STATS")
                if row["database"].endswith("_tx")) - xacts_before
    assert xacts >= answered, (xacts, answered)
    # It is a transaction pool: one client's transactions change server session ...
    found = check_pool(bouncer.url("transaction"))
    assert not found.keeps_sessions, found
    # ... and the API left no session state behind on them (its timeouts are SET LOCAL).
    with clean_db.connect() as direct:
        default = direct.execute(text("SHOW statement_timeout")).scalar()
    from sqlalchemy import create_engine

    pooled = create_engine(bouncer.url("transaction"))
    try:
        for _ in range(POOL_SIZE * 2):
            with pooled.connect() as conn:
                assert conn.execute(text("SHOW statement_timeout")).scalar() == default
    finally:
        pooled.dispose()
    print(f"\n[pgbouncer transaction pool] {answered} GETs from {THREADS} threads + 5 POST "
          f"/jobs, all answered: {xacts} transactions through at most {peak['servers']} "
          f"server connections for up to {peak['clients']} clients at once; pids seen "
          f"{found}; statement_timeout on the pooled sessions still {default}")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flask", "--app", "api", "etl", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_worker_refuses_a_transaction_pool_and_starts_on_a_session_pool(
    bouncer: PgBouncer, base_env: dict[str, str], tmp_path: Path, clean_db: Engine,
    worker_factory: Callable[..., WorkerProcess]
) -> None:
    # clean_db: no queued task from another test for the accepted worker to run meanwhile.
    env = {**os.environ, **base_env, "PYTHONPATH": str(ROOT)}
    refused = WorkerProcess({**env, "DATABASE_URL": bouncer.url("transaction")},
                            tmp_path / "refused.log")
    with pytest.raises(RuntimeError, match="worker exited") as exited:
        refused.start(timeout=60)
    assert refused.proc is not None and refused.proc.wait(10) != 0
    refused.stop()
    message = str(exited.value)
    assert "refuses to start" in message and "pool_mode = session" in message, message
    assert "ready." not in refused.log_text()

    reap = _cli({**env, "DATABASE_URL": bouncer.url("transaction")}, "reap")
    assert reap.returncode == 1 and "refuses to start" in reap.stderr, reap.stderr[-2000:]

    # A session pool (like a direct connection) keeps each connection's session: accepted.
    started = worker_factory({"DATABASE_URL": bouncer.url("session")})
    assert "keeps one server session per connection" in started.log_text()
    assert _cli({**env, "DATABASE_URL": bouncer.url("session")}, "reap").returncode == 0
    print("\n[worker behind pgbouncer] transaction pool: exit "
          f"{refused.proc.returncode}, '{message.splitlines()[-1][:160]}'; flask etl reap "
          "exit 1; session pool: worker ready, reap exit 0")
