"""Test fixtures: a real PostgreSQL database built by the migrations, real Redis, real workers."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

import api
from api.db import release_connections
from shared import task_names
from shared.config import Settings, load_settings, normalize_database_url, reset_settings
from shared.models import Base

ROOT = Path(__file__).resolve().parent.parent
TEST_TOKEN = "test-token-" + uuid.uuid4().hex
# Every broker key of this session carries this prefix, so concurrent test sessions sharing
# one Redis database never consume each other's tasks.
BROKER_PREFIX = f"kt-{uuid.uuid4().hex[:8]}:"
# This session's Redis list of each queue (shared/task_names.py), by queue name.
QUEUE_KEYS = {queue: BROKER_PREFIX + queue for queue in task_names.queues()}
UNACKED_KEY = BROKER_PREFIX + "unacked"
# Tables the migrations fill and the tests must not empty: data_version's single row is the
# API's cache key and its version must never go back (the trigger only updates it).
KEPT_TABLES = frozenset({"data_version"})
# Every other mapped table, children first. Built from the models, not written by hand: a
# table without a foreign key (quote_flags, anomalies, ...) is not reached by CASCADE,
# and RESTART IDENTITY would hand its leftover rows to the next test's runs.
TABLES = tuple(table.name for table in reversed(Base.metadata.sorted_tables)
               if table.name not in KEPT_TABLES)


def _server_url() -> str:
    # Any PostgreSQL URL form (postgres://, postgresql://, ...) read the way the app reads it.
    return normalize_database_url(
        os.environ.get("DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    )


def _admin_engine() -> Engine:
    url = make_url(_server_url()).set(database="postgres")
    return create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def xdist_worker_index() -> int:
    """This pytest-xdist worker's number (gw0 -> 0, gw3 -> 3); 0 without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


def redis_db_url(offset: int = 0) -> str:
    """REDIS_URL on a database index reserved for this session: 15 - offset without xdist,
    two indexes lower per xdist worker (gw1: 13 - offset), so concurrent workers never share
    keys outside the broker prefix (the sources' quota windows, the API's rate limits) nor
    empty each other's database (tests/shared/sources flushes its own). TEST_REDIS_DB fixes
    the main index."""
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    fixed = os.environ.get("TEST_REDIS_DB")
    db = int(fixed) - offset if fixed else 15 - offset - 2 * xdist_worker_index()
    assert db >= 0, f"no Redis database index left for xdist worker {xdist_worker_index()}"
    return base.rsplit("/", 1)[0] + f"/{db}" if base.count("/") >= 3 else f"{base}/{db}"


def _redis_url() -> str:
    return redis_db_url()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this test session, schema built by `flask db upgrade`."""
    name = f"kasparro_test_{uuid.uuid4().hex[:10]}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(_server_url()).set(database=name).render_as_string(hide_password=False)
    env = dict(os.environ, DATABASE_URL=url)
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "api", "db", "upgrade"],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis database index reserved for tests."""
    return _redis_url()


@pytest.fixture(scope="session")
def base_env(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, str]:
    """Environment shared by the test process and the processes it starts."""
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "API_TOKEN": TEST_TOKEN,
        "BROKER_KEY_PREFIX": BROKER_PREFIX,
        "LOG_LEVEL": "INFO",
        "ETL_TASK_TIME_LIMIT": "120",
        "CELERY_VISIBILITY_TIMEOUT": "180",
    }
    os.environ.update(env)
    reset_settings()
    return env


@pytest.fixture
def csv_dir(tmp_path: Path) -> Path:
    """A private copy of the project's data/ folder (CSV fixtures and the alias file)."""
    target = tmp_path / "data"
    shutil.copytree(ROOT / "data", target)
    return target


@pytest.fixture
def settings(base_env: dict[str, str], csv_dir: Path) -> Settings:
    """Settings for in-process calls, pointing at the test database and the CSV copy."""
    return load_settings({**base_env, "CSV_DIR": str(csv_dir)})


@pytest.fixture(scope="session")
def engine(base_env: dict[str, str]) -> Iterator[Engine]:
    """An engine on the test database."""
    eng = create_engine(base_env["DATABASE_URL"], pool_pre_ping=True)
    yield eng
    eng.dispose()


# TRUNCATE gives each table it names new files (0.2-0.5 s for all of them on a busy machine,
# before every test), so only the tables holding a row are named. current_quotes always is:
# its TRUNCATE trigger moves data_version, which the answer caches are keyed on.
_HOLDING_ROWS = " UNION ALL ".join(f"SELECT '{t}' WHERE EXISTS (SELECT 1 FROM {t})"
                                   for t in TABLES)
# The sequences of every table, empty ones too (a rolled-back insert moves a sequence).
_RESTART_SEQUENCES = text(
    "SELECT setval(s.seqrelid::regclass, s.seqstart, false) FROM pg_sequence s "
    "JOIN pg_depend d ON d.objid = s.seqrelid AND d.classid = 'pg_class'::regclass "
    "WHERE d.refobjid = ANY(CAST(:tables AS regclass[])) AND d.deptype IN ('a', 'i')")


def truncate_tables(engine: Engine) -> None:
    """Empty every table but the kept ones, ids restarting at 1."""
    with engine.begin() as conn:
        # Locked first, so no straggler writes between the look and the TRUNCATE.
        conn.execute(text(f"LOCK TABLE {', '.join(TABLES)} IN ACCESS EXCLUSIVE MODE"))
        holding = set(conn.execute(text(_HOLDING_ROWS)).scalars()) | {"current_quotes"}
        conn.execute(text(f"TRUNCATE {', '.join(t for t in TABLES if t in holding)} "
                          "RESTART IDENTITY CASCADE"))
        conn.execute(_RESTART_SEQUENCES, {"tables": list(TABLES)})


@pytest.fixture
def clean_db(engine: Engine, redis_url: str) -> Engine:
    """Empty every table and this session's broker keys before the test."""
    truncate_tables(engine)
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=BROKER_PREFIX + "*", count=500):
        client.delete(key)
    client.close()
    return engine


# Every Flask app built in this process (api.create_app, wrapped here: fixtures, test modules and
# helpers all call it as api.create_app). A test that drops its app would leave its connections
# open until garbage collection; with several sessions at once (pytest-xdist, other test runs)
# that reaches the server's max_connections. They are closed after each test instead; an app
# still in use (a module's) reconnects on its next request.
_APPS: weakref.WeakSet[Any] = weakref.WeakSet()
_create_app = api.create_app


def _create_tracked_app(*args: Any, **kwargs: Any) -> Any:
    app = _create_app(*args, **kwargs)
    _APPS.add(app)
    return app


api.create_app = _create_tracked_app  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def _release_app_connections() -> Iterator[None]:
    """After each test, close the database connections of every app built so far."""
    yield
    for built in list(_APPS):
        release_connections(built)


@pytest.fixture
def app(settings: Settings) -> Any:
    """The Flask app on the test database and Redis."""
    from api import create_app

    return create_app({"TESTING": True}, settings=settings)


@pytest.fixture
def client(app: Any) -> Any:
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def auth_headers() -> dict[str, str]:
    """The bearer header that POST /jobs needs."""
    return {"Authorization": f"Bearer {TEST_TOKEN}"}


# Every raw record, one row each: API items and CSV lines (kept in blocks, shown one row each by
# the views raw_items and raw_lines; an item's text: tests/helpers/raw_items.py). Usable
# wherever a table name is (count, FROM).
ALL_RAW = ("(SELECT id, source, source_key, content_hash, run_id FROM raw_items "
           "UNION ALL SELECT id, source, source_key, content_hash, run_id "
           "FROM raw_lines) AS all_raw")


def count(engine: Engine, table: str, where: str = "TRUE", **params: Any) -> int:
    """Row count of a table (helper for assertions)."""
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"), params)
                   .scalar_one())


def queued_messages(redis_url: str, *queues: str) -> int:
    """Task messages waiting in this session's `queues` (all of them when none is named),
    none taken by a worker yet."""
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(int(client.llen(QUEUE_KEYS[queue])) for queue in queues or QUEUE_KEYS)
    finally:
        client.close()


def queue_lengths(redis_url: str) -> dict[str, int]:
    """Messages waiting per queue of this session, and `unacked`: delivered, not acknowledged."""
    client = redis.Redis.from_url(redis_url)
    try:
        lengths = {queue: int(client.llen(key)) for queue, key in QUEUE_KEYS.items()}
        return {**lengths, "unacked": int(client.hlen(UNACKED_KEY))}
    finally:
        client.close()


class WorkerProcess:
    """A real `celery -A worker worker` subprocess with its own log file and node name.

    `queues`: its `-Q`; None passes no `-Q`, so it consumes every queue the shared config
    declares (as the worker image's default command does).
    """

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 2,
                 extra_args: tuple[str, ...] = (), queues: tuple[str, ...] | None = None
                 ) -> None:
        self.env, self.log_path = env, log_path
        self.concurrency, self.extra_args, self.queues = concurrency, extra_args, queues
        self.node = f"test-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> "WorkerProcess":
        """Start the worker and wait until it says it is ready."""
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "-l", "INFO",
             "-c", str(self.concurrency), "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-n", self.node,
             *(("-Q", ",".join(self.queues)) if self.queues is not None else ()),
             *self.extra_args],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log_path.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready: {self.log_path.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker's whole process group."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        """Stop the worker (TERM, then KILL) and close its log."""
        if self.proc and self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def log_text(self) -> str:
        """Everything the worker logged so far."""
        return self.log_path.read_text(errors="replace")


def _worker_starter(base_env: dict[str, str], log_dir: Path, started: list[WorkerProcess]
                    ) -> Callable[..., WorkerProcess]:
    def start(env_overrides: dict[str, str] | None = None, **kwargs: Any) -> WorkerProcess:
        env = {**os.environ, **base_env, **(env_overrides or {})}
        env["PYTHONPATH"] = str(ROOT)
        log_path = log_dir / f"worker-{len(started)}.log"
        proc = WorkerProcess(env, log_path, **kwargs)
        started.append(proc)
        return proc.start()

    return start


@pytest.fixture
def worker_factory(base_env: dict[str, str], tmp_path: Path
                   ) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker subprocesses; all are stopped after the test."""
    started: list[WorkerProcess] = []
    yield _worker_starter(base_env, tmp_path, started)
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def module_worker_factory(base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                          ) -> Iterator[Callable[..., WorkerProcess]]:
    """Like worker_factory, but its workers serve the module's later tests too and stop after
    its last: one start and stop per module, not per test. For tests that neither stop, kill
    nor reconfigure the worker."""
    started: list[WorkerProcess] = []
    yield _worker_starter(base_env, tmp_path_factory.mktemp("module-workers"), started)
    for proc in started:
        proc.stop()


@pytest.fixture
def upstream() -> Iterator[Any]:
    """The replay upstream (recorded CoinGecko/CoinPaprika payloads) on a free loopback port."""
    from tests.upstream import ReplayUpstream

    server = ReplayUpstream().start()
    yield server
    server.stop()
