"""Fault-suite harness: slow CSV jobs, real workers, and the invariants every case asserts."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest
from sqlalchemy import Engine, text

from shared.ingest.publish import unpublished
from shared.locks import run_lock
from scripts import stack
from tests.conftest import ALL_RAW, ROOT, count, queue_lengths
from tests.helpers.waiting import wait_for_job

HEADER = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap\n"
COINS, DAYS = 30, 120
ROWS = COINS * DAYS

# Short limits so that redelivery after a lost worker happens within seconds, not an hour.
FAULT_ENV = {
    "ETL_TASK_TIME_LIMIT": "20",
    "ETL_TASK_SOFT_TIME_LIMIT": "18",
    "CELERY_VISIBILITY_TIMEOUT": "25",
    "BROKER_RESTORE_INTERVAL_SECONDS": "1",
    "BROKER_RESTORE_THROTTLE": "1",
    "CSV_BATCH_ROWS": "150",
    "ETL_BATCH_DELAY_SECONDS": "0.25",
    "ETL_SOURCES": "csv",
}
# A worker started after the fault to take a lost message back: its restore sweep hands back
# a message delivered more than 10 s ago, not FAULT_ENV's 25 s, so a case waits that much
# less. Its own runs are the rest of the interrupted one and a clean re-run, at full speed
# (no batch delay): far inside its time limit, which must stay under its visibility timeout.
SWEEPER_ENV = {
    "ETL_BATCH_DELAY_SECONDS": "0",
    "ETL_TASK_TIME_LIMIT": "8",
    "ETL_TASK_SOFT_TIME_LIMIT": "7",
    "CELERY_VISIBILITY_TIMEOUT": "10",
}


def write_big_csv(csv_dir: Path, coins: int = COINS, days: int = DAYS) -> Path:
    """Replace the CSV folder's data with one Kaggle-format file of coins x days rows."""
    for path in csv_dir.glob("*.csv"):
        if path.name != "asset_aliases.csv":
            path.unlink()
    lines = [HEADER]
    n = 0
    for day in range(days):
        stamp = time.strftime("%Y-%m-%d 23:59:59", time.gmtime(1_600_000_000 + day * 86400))
        for coin in range(coins):
            n += 1
            price = f"{coin + 1}.{day:04d}"
            lines.append(f"{n},Faultcoin {coin},FC{coin},{stamp},{price},{price},{price},"
                         f"{price},{coin * 1000 + day},{coin * 99 + day}\n")
    target = csv_dir / "faults.csv"
    target.write_text("".join(lines))
    return target


class CheckpointWatcher(threading.Thread):
    """Samples checkpoints while a fault plays out; any backwards move is recorded."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.stop_event = threading.Event()
        self.seen: dict[str, list[int]] = defaultdict(list)
        self.regressions: list[tuple[str, int, int]] = []

    def run(self) -> None:
        """Poll every 100 ms until stopped; survive a database that is down for a while."""
        while not self.stop_event.is_set():
            try:
                with self.engine.connect() as conn:
                    rows = conn.execute(text(
                        "SELECT source || '/' || key, (value->>'offset')::bigint "
                        "FROM checkpoints WHERE value ? 'offset'")).all()
            except Exception:
                rows = []
            for key, offset in rows:
                history = self.seen[key]
                if history and offset < history[-1]:
                    self.regressions.append((key, history[-1], offset))
                history.append(offset)
            self.stop_event.wait(0.1)

    def stop(self) -> None:
        """Stop sampling."""
        self.stop_event.set()
        self.join(5)


@dataclass
class Fault:
    """One fault case: its client, database, Redis and the watcher of checkpoints."""

    client: Any
    engine: Engine
    redis_url: str
    auth: dict[str, str]
    watcher: CheckpointWatcher
    started: float = field(default_factory=time.monotonic)

    def post_job(self, sources: list[str] | None = None, **headers: str) -> int:
        """POST /jobs and return the job id."""
        response = self.client.post("/jobs", json={"sources": sources or ["csv"]},
                                    headers={**self.auth, **headers})
        assert response.status_code in (200, 202), response.get_json()
        return int(response.get_json()["id"])

    def wait_job(self, job_id: int, timeout: float = 90) -> dict[str, Any]:
        """Wait until the job is terminal."""
        return wait_for_job(self.client, job_id, timeout)

    def wait_rows(self, minimum: int, timeout: float = 30) -> int:
        """Wait until at least `minimum` quotes are committed (so a fault hits mid-run)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = count(self.engine, "quotes")
            if rows >= minimum:
                return rows
            time.sleep(0.05)
        raise TimeoutError(f"fewer than {minimum} quotes after {timeout}s")

    def pause_mid_run(self, pause: Callable[[], None], minimum: int) -> int:
        """Wait until `minimum` quotes are committed, `pause` the worker (SIGSTOP), then check
        that its run is still mid-way: fewer than ROWS quotes, one run running. The fault that
        follows lands on a run that cannot move on meanwhile, frozen rather than raced (the
        batch delays leave seconds between `minimum` and the end). Returns the quotes
        committed."""
        self.wait_rows(minimum)
        pause()
        committed = count(self.engine, "quotes")
        assert committed < ROWS, "the run ended before the worker was paused"
        assert count(self.engine, "runs", "status = 'running'") == 1
        return committed

    def assert_resumed_once(self, job_id: int, timeout: float = 120) -> dict[str, Any]:
        """The job succeeds on a second attempt that read only what the first had not
        committed; then every invariant holds and a clean re-run adds nothing."""
        job = self.wait_job(job_id, timeout)
        assert job["status"] == "succeeded", job
        run = job["runs"][0]
        assert run["attempts"] == 2
        # Committed batches were not fetched again: the two attempts read each row once.
        assert run["fetched"] == ROWS and run["inserted"] == ROWS
        self.assert_invariants()
        self.assert_clean_rerun_adds_nothing()
        return job

    def assert_invariants(self, expected_rows: int = ROWS, deadline: float = 120) -> None:
        """lost = 0, duplicates = 0, all terminal, queues empty, no checkpoint regression."""
        end = time.monotonic() + deadline
        while count(self.engine, "runs", "status IN ('queued','running')") or count(
                self.engine, "jobs", "status IN ('queued','running')"):
            assert time.monotonic() < end, "runs or jobs still active past the deadline"
            time.sleep(0.25)
        assert count(self.engine, "quotes") == expected_rows, "lost or extra quotes"
        with self.engine.connect() as conn:
            dup_quotes = conn.execute(text(
                "SELECT count(*) - count(DISTINCT (source, source_asset_id, observed_at)) "
                "FROM quotes")).scalar_one()
            dup_raw = conn.execute(text(
                "SELECT count(*) - least(count(DISTINCT (source, source_key)), "
                f"count(DISTINCT (source, content_hash))) FROM {ALL_RAW}"
            )).scalar_one()
        assert (dup_quotes, dup_raw) == (0, 0)
        assert count(self.engine, ALL_RAW) == expected_rows
        assert unpublished_quotes(self.engine) == [], "committed quotes not in current_quotes"
        # Every queue (shared/task_names.py) empty, nothing delivered and unacknowledged.
        lengths = queue_lengths(self.redis_url)
        assert lengths == dict.fromkeys(lengths, 0), lengths
        self.watcher.stop()
        assert self.watcher.regressions == []

    def assert_clean_rerun_adds_nothing(self) -> None:
        """A clean job afterwards succeeds, writes 0 rows and leaves table checksums (and the
        data version, the key of the API's /data cache) alone."""
        before = table_checksums(self.engine)
        job = self.wait_job(self.post_job())
        assert job["status"] == "succeeded", job
        assert sum(r["inserted"] for r in job["runs"]) == 0
        assert table_checksums(self.engine) == before


def table_checksums(engine: Engine) -> dict[str, str]:
    """md5 over each data table's natural content (ids and load times excluded)."""
    queries = {
        "quotes": "SELECT md5(string_agg(concat_ws('|', source, source_asset_id, observed_at, "
                  "price_usd, market_cap_usd, volume_24h_usd), ',' ORDER BY source, "
                  "source_asset_id, observed_at)) FROM quotes",
        "raw": "SELECT md5(string_agg(encode(content_hash, 'hex'), ',' ORDER BY content_hash)) "
               f"FROM {ALL_RAW}",
        "assets": "SELECT md5(string_agg(slug, ',' ORDER BY slug)) FROM assets",
        "current_quotes": "SELECT md5(string_agg(concat_ws('|', asset_id, source, observed_at, "
                          "price_usd, updated_at), ',' ORDER BY asset_id, source)) "
                          "FROM current_quotes",
        "data_version": "SELECT version::text FROM data_version",
    }
    with engine.connect() as conn:
        return {name: conn.execute(text(sql)).scalar_one() or "" for name, sql in queries.items()}


def unpublished_quotes(engine: Engine) -> list[tuple[int, str]]:
    """(asset, source) pairs whose newest committed quote is not what current_quotes holds."""
    with engine.connect() as conn:
        return unpublished(conn.connection.cursor())


def worker_children(worker: Any) -> list[psutil.Process]:
    """The prefork pool children of a worker subprocess."""
    return psutil.Process(worker.proc.pid).children(recursive=True)


def source_lock_holder(engine: Engine, worker: Any, source: str) -> psutil.Process | None:
    """The worker child whose database session holds `source`'s extract run lock (the one
    live execution of the source), or None."""
    lock = run_lock("extract", source)
    with engine.connect() as conn:
        # A two-key advisory lock shows as classid (namespace), objid (object), objsubid 2;
        # pg_locks lists every database's, and other test sessions may share the server.
        port = conn.execute(text(
            "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = :ns "
            "AND l.objid::bigint = :obj AND l.objsubid = 2 AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"ns": int(lock.namespace), "obj": lock.object}).scalar()
    if port is None:
        return None
    for child in worker_children(worker):
        try:
            if any(c.laddr and c.laddr.port == port for c in child.net_connections("tcp")):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def freeze_source_run(engine: Engine, worker: Any, source: str, timeout: float = 60
                      ) -> psutil.Process:
    """SIGSTOP the child executing a run of `source` and return it: the run stays active
    (its lock held) until the child is resumed. A child that let the lock go just before it
    was stopped is resumed and the next holder is tried."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = source_lock_holder(engine, worker, source)
        if holder is not None:
            holder.suspend()
            if source_lock_holder(engine, worker, source) == holder:
                return holder
            holder.resume()
        time.sleep(0.02)
    raise TimeoutError(f"no {source} run held its lock within {timeout}s")


def wait_broker_drained(engine: Engine, redis_url: str, timeout: float = 120) -> None:
    """Until no message is queued (on any queue) or unacknowledged and no run or job is
    active, seen twice 0.5 s apart (a message a worker has just popped is briefly in neither
    Redis key)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2:
        assert time.monotonic() < deadline, "broker or runs still busy past the deadline"
        busy = (any(queue_lengths(redis_url).values())
                or count(engine, "runs", "status IN ('queued','running')")
                or count(engine, "jobs", "status IN ('queued','running')"))
        quiet = 0 if busy else quiet + 1
        time.sleep(0.5)


@pytest.fixture
def fault(clean_db: Engine, client: Any, redis_url: str, auth_headers: dict[str, str],
          csv_dir: Path) -> Iterator[Fault]:
    """A fault case on a big generated CSV, with the checkpoint watcher running."""
    write_big_csv(csv_dir)
    watcher = CheckpointWatcher(clean_db)
    watcher.start()
    case = Fault(client, clean_db, redis_url, auth_headers, watcher)
    yield case
    watcher.stop()


@pytest.fixture
def fault_worker(worker_factory: Any, csv_dir: Path) -> Callable[..., Any]:
    """Start a worker with the fault-suite environment (plus overrides)."""

    def start(overrides: dict[str, str] | None = None, **kwargs: Any) -> Any:
        return worker_factory({**FAULT_ENV, "CSV_DIR": str(csv_dir), **(overrides or {})},
                              **kwargs)

    return start


@pytest.fixture
def own_postgres() -> Iterator[tuple[Path, str]]:
    """A PostgreSQL of this test's own (embedded binaries), migrated; yields (var_dir, url)."""
    # Outside pytest's tmp root: each pytest session resets that root to 0700, which would lock
    # the unprivileged PostgreSQL account out if another session starts meanwhile.
    var_dir = Path(tempfile.mkdtemp(prefix="kasparro-faults-pg-"))
    server_url, stop = stack.start_embedded_postgres(var_dir, port=0, database="faults")
    stack.ensure_database(server_url)
    migrated = subprocess.run([sys.executable, "-m", "flask", "--app", "api", "db", "upgrade"],
                              cwd=ROOT, env={**os.environ, "DATABASE_URL": server_url},
                              capture_output=True, text=True)
    if migrated.returncode:
        stop()
        shutil.rmtree(var_dir, ignore_errors=True)
        pytest.fail(f"flask db upgrade failed:\n{migrated.stdout}{migrated.stderr[-3000:]}")
    try:
        yield var_dir, server_url
    finally:
        stop()
        shutil.rmtree(var_dir, ignore_errors=True)
