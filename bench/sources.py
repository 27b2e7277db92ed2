"""Case 5: the three-source job on a real worker (-c 3) against the replay upstream."""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import BENCH_DIR, ROOT, BenchDatabase, Row, only, say, stop_process
from shared.config import load_settings

SOURCES = ["coingecko", "coinpaprika", "csv"]


def _start_upstream(
    env: dict[str, str], coins: int, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.upstream", "--port", "0", "--coingecko-total", str(coins)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=out, start_new_session=True)
    assert proc.stdout is not None
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()),  # type: ignore
                              daemon=True)
    reader.start()
    reader.join(30)
    first = line[0].decode().strip() if line else ""
    if not first.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"replay upstream did not start: {first!r}")
    threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()  # type: ignore
    return proc, first.split(None, 1)[1].rstrip("/")


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    start = log.stat().st_size if log.exists() else 0
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-l", "INFO", "-c", "3",
         "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "ready." in log.read_text(errors="replace")[start:]:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"celery worker not ready; see {log}")


def _run_job(db: BenchDatabase, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Create the three-source job, send its chord, wait until normalize closed it."""
    from celery import Celery

    from shared.celery_config import celery_config
    from shared.db import unit_of_work
    from shared.jobs.submit import submit_job

    settings = load_settings(env)
    client = Celery("kasparro-bench", set_as_current=False)
    client.conf.update(celery_config(settings))
    # Connect to the broker and the result backend first, as a running API process already
    # is: the job's clock starts at its commit, and a cold client would add its own start-up.
    client.connection_for_write().ensure_connection(max_retries=3)
    client.backend.client.ping()
    with unit_of_work(db.engine) as session:
        job = submit_job(session, client, SOURCES, "cli").job
    deadline = time.monotonic() + timeout
    with db.engine.connect() as conn:
        while time.monotonic() < deadline:
            status = conn.execute(text("SELECT status FROM jobs WHERE id = :id"),
                                  {"id": job.id}).scalar_one()
            conn.commit()
            if status in ("succeeded", "partial", "failed", "skipped"):
                break
            time.sleep(0.1)
        row = dict(conn.execute(text(
            "SELECT j.status, extract(epoch FROM j.finished_at - j.created_at) AS wall, "
            "extract(epoch FROM min(r.started_at) - j.created_at) AS start_lag, "
            "extract(epoch FROM j.finished_at - max(r.finished_at)) AS normalize "
            "FROM jobs j JOIN runs r ON r.job_id = j.id WHERE j.id = :id "
            "GROUP BY j.id"), {"id": job.id}).mappings().one())
        runs = {r["source"]: dict(r) for r in conn.execute(text(
            "SELECT source, status, fetched, http_requests, rate_limit_waits, error, "
            "extract(epoch FROM finished_at - started_at) AS seconds "
            "FROM runs WHERE job_id = :id"), {"id": job.id}).mappings()}
    client.close()
    return {"job": row, "runs": runs}


def _quota_minimum(requests: int, limit: int, period: int) -> float:
    """Least time a moving-window quota of `limit` per `period` s allows for `requests`."""
    return math.floor(max(0, requests - 1) / limit) * period


def _one(db: BenchDatabase, env: dict[str, str], redis_db: int, log_dir: Path, coins: int,
         quotas: dict[str, str], csv_dir: Path, timeout: float) -> dict[str, Any]:
    import redis

    redis_url = env["REDIS_URL"].rsplit("/", 1)[0] + f"/{redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    run_env = {**env, **quotas, "REDIS_URL": redis_url, "CSV_DIR": str(csv_dir),
               "HTTP_TIMEOUT_SECONDS": "10"}
    upstream, base = _start_upstream(run_env, coins, log_dir / "upstream.log")
    run_env["COINGECKO_BASE_URL"] = f"{base}/api/v3"
    run_env["COINPAPRIKA_BASE_URL"] = f"{base}/v1"
    worker = None
    try:
        worker = _start_worker(run_env, log_dir / f"worker-{redis_db}.log")
        return _run_job(db, run_env, timeout)
    finally:
        if worker is not None:
            stop_process(worker)
        stop_process(upstream)
        redis.Redis.from_url(redis_url).flushdb()


def sources_cases(db: BenchDatabase, env: dict[str, str], args: argparse.Namespace
                  ) -> tuple[list[Row], dict[str, Any]]:
    """Case 5 with quotas lifted, then with the free-plan quotas."""
    log_dir = BENCH_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    csv_dir = only(BENCH_DIR / "csv-sources", *sorted((ROOT / "data").glob("*.csv")))
    coins = args.gecko_coins
    say(f"sources: quotas lifted ({coins:,} CoinGecko coins, 2,000 CoinPaprika tickers, "
        "data/*.csv)")
    no_quota = {"COINGECKO_RATE_LIMIT": "1000000", "COINPAPRIKA_RATE_LIMIT": "1000000"}
    # The first job creates every coin's asset; the measured jobs see the steady state.
    cold = _one(db, env, 11, log_dir, coins, no_quota, csv_dir, 300)
    lifted = _one(db, env, 11, log_dir, coins, no_quota, csv_dir, 300)
    say("sources: free-plan quotas (30/min CoinGecko, 10/min CoinPaprika)")
    free = _one(db, env, 12, log_dir, coins, {}, csv_dir, 600)

    def slowest(result: dict[str, Any]) -> tuple[str, float]:
        source, run = max(result["runs"].items(), key=lambda kv: float(kv[1]["seconds"] or 0))
        return source, float(run["seconds"] or 0)

    rows = []
    notes = []
    for label, result in (("first job (creates the assets)", cold), ("quotas lifted", lifted),
                          ("free-plan quotas", free)):
        runs = result["runs"]
        job = result["job"]
        details = ", ".join(
            f"{s} {r['status']} {float(r['seconds'] or 0):.2f}s ({r['fetched']} records, "
            f"{r['http_requests']} requests, {r['rate_limit_waits']} quota waits)"
            for s, r in sorted(runs.items()))
        notes.append(f"5. {label}: job {job['status']} in {float(job['wall']):.2f}s (first run "
                     f"started after {float(job['start_lag']):.2f}s, normalize "
                     f"{float(job['normalize']):.2f}s); runs {details}")
    wall = float(lifted["job"]["wall"])
    source, slow = slowest(lifted)
    rows.append(Row("5. three-source job, quotas lifted: job wall vs slowest run",
                    f"{wall:.2f} s", f"{source} run {slow:.2f} s", wall / slow, "<= 1.15x",
                    wall / slow <= 1.15 and lifted["job"]["status"] == "succeeded"))
    settings = load_settings({})
    quota = {"coingecko": settings.coingecko_rate, "coinpaprika": settings.coinpaprika_rate}
    minimum, binding = 0.0, ""
    for name, run in free["runs"].items():
        floor = float(lifted["runs"][name]["seconds"] or 0)
        if name in quota:
            floor = max(floor, _quota_minimum(int(run["http_requests"]),
                                              quota[name].requests, quota[name].period_seconds))
        if floor > minimum:
            minimum, binding = floor, name
    free_wall = float(free["job"]["wall"])
    rows.append(Row("5. three-source job, free-plan quotas: job wall vs least the quotas allow",
                    f"{free_wall:.2f} s", f"{binding} {minimum:.2f} s", free_wall / minimum,
                    "<= 1.2x", free_wall / minimum <= 1.2 and free["job"]["status"] == "succeeded"))
    return rows, {"cold": cold, "lifted": lifted, "free": free, "notes": notes}
