"""Scale fixtures: a primary with a streaming replica, the API on them, threads hammering it."""
from __future__ import annotations

import shutil
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis
from flask import Flask
from sqlalchemy import Engine, create_engine, text

from shared.config import Settings, load_settings
from tests.api.helpers import coins_csv
from tests.conftest import BROKER_PREFIX, ROOT, TEST_TOKEN
from tests.helpers.csv_runs import HEADER, only_file, run_csv
from tests.scale.postgres import Cluster, start_cluster

# The API's primary connections name themselves in the servers' logs and pg_stat_activity;
# the replica engine's name is api.replicas.APPLICATION_NAME.
PRIMARY_APP = "kasparro-api-primary"
COINS = 30


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A migrated primary and its streaming replica, stopped and removed after the module."""
    started = start_cluster()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def broker_prefix(redis_url: str) -> Iterator[str]:
    """A broker key prefix of this module's own; its keys (queued jobs nobody runs) go after."""
    prefix = f"{BROKER_PREFIX}scale-{uuid.uuid4().hex[:6]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=prefix + "*", count=500):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def scale_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV folder for the module: the alias file and one file of COINS coins."""
    target = tmp_path_factory.mktemp("scale") / "data"
    shutil.copytree(ROOT / "data", target)
    only_file(target, "coins.csv", HEADER + coins_csv(1, COINS))
    return target


def scale_settings(database_url: str, redis_url: str, csv_dir: Path, prefix: str,
                   **env: str) -> Settings:
    """Settings of an API or run on these servers (more variables in `env`)."""
    return load_settings({"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                          "API_TOKEN": TEST_TOKEN, "CSV_DIR": str(csv_dir),
                          "BROKER_KEY_PREFIX": prefix, "ETL_SOURCES": "csv", **env})


def publish(engine: Engine, settings: Settings, csv_dir: Path, day: int, price: str) -> int:
    """A CSV run adding day `day` for every coin at prices `price`<n>; the data version after."""
    with (csv_dir / "coins.csv").open("a") as handle:
        handle.write(coins_csv(1, COINS, day=day, price_prefix=price))
    assert run_csv(engine, settings)["status"] == "succeeded"
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT version FROM data_version")).scalar_one())


@dataclass
class Load:
    """Threads sending GETs until stopped; every answer's status counted per path."""

    app: Flask
    paths: list[str]
    threads: int
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> "Load":
        """Start the threads (each with its own test client)."""
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, n: int) -> None:
        client = self.app.test_client()
        i = n
        while not self.stop_event.is_set():
            path = self.paths[i % len(self.paths)]
            i += 1
            try:
                response = client.get(path)
                status, body = response.status_code, response.get_data(as_text=True)
            except Exception as exc:  # noqa: BLE001 - an exception is a failed read too
                status, body = 0, repr(exc)
            with self._lock:
                self.statuses[(path, status)] += 1
                if status != 200 and len(self.failures) < 20:
                    self.failures.append(f"{path} {status} {body[:300]}")

    def total(self) -> int:
        """Answers so far."""
        with self._lock:
            return sum(self.statuses.values())

    def stop(self) -> None:
        """Stop and join the threads."""
        self.stop_event.set()
        for worker in self._workers:
            worker.join(30)


@pytest.fixture
def app_factory() -> Iterator[Callable[..., Flask]]:
    """Build API apps (create_app with a config); their engines are disposed after the test."""
    from api import create_app

    made: list[Flask] = []

    def make(settings: Settings, **config: Any) -> Flask:
        app = create_app({"TESTING": True, "RATELIMIT_ENABLED": False, **config},
                         settings=settings)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["db_replicas"].dispose()
        app.extensions["db_engine"].dispose()


@pytest.fixture(scope="module")
def primary_engine(cluster: Cluster) -> Iterator[Engine]:
    """An engine on the primary's database (the test's own writes and checks)."""
    engine = create_engine(cluster.primary.url(), pool_pre_ping=True)
    yield engine
    engine.dispose()
