"""A source's rows are served from the commit that stored them, whatever its job's other
sources do: a hanging CoinPaprika (its requests held by the replay upstream until the test
releases them, its worker child killed) holds back neither the CSV run nor `/data?source=csv`;
every committed quote ends up published."""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import Engine, text

from shared.ingest.publish import unpublished
from tests.conftest import count
from tests.helpers.waiting import wait_for_job
from tests.upstream import ReplayUpstream

pytestmark = pytest.mark.e2e

# A child per source plus one, as shared.celery_config sets it when `-c` is not given.
CONCURRENCY = 4


@pytest.fixture
def slow_env(upstream: ReplayUpstream, csv_dir: Path) -> dict[str, str]:
    """Every source on the replay upstream / the CSV copy. The client's timeout is longer
    than any hold here, so a held request stays one request until the test releases it."""
    return {
        "COINGECKO_BASE_URL": upstream.coingecko_base_url,
        "COINPAPRIKA_BASE_URL": upstream.coinpaprika_base_url,
        "COINGECKO_RATE_LIMIT": "1000", "COINPAPRIKA_RATE_LIMIT": "1000",
        "HTTP_TIMEOUT_SECONDS": "100", "HTTP_MAX_RETRIES": "2",
        "HTTP_BACKOFF_MAX_SECONDS": "1", "CSV_DIR": str(csv_dir),
    }


def _run(engine: Engine, job_id: int, source: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT r.*, j.created_at AS job_created_at FROM runs r JOIN jobs j ON j.id = r.job_id "
            "WHERE r.job_id = :j AND r.source = :s"), {"j": job_id, "s": source}).mappings().one())


def _csv_served(client: Any) -> int:
    return int(client.get("/data?source=csv&total=true").get_json()["pagination"]["total"])


def _watch_csv_publish(engine: Engine, client: Any, job_id: int) -> dict[str, Any]:
    """Poll until /data?source=csv serves rows; when the first CSV quote was committed, when
    /data served it, and what the slow source was doing at that moment."""
    first_commit = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if first_commit is None and count(engine, "quotes", "source = 'csv'"):
            first_commit = time.monotonic()
        if _csv_served(client):
            seen = time.monotonic()
            return {"delay": seen - (first_commit or seen),
                    "paprika": _run(engine, job_id, "coinpaprika")["status"]}
        time.sleep(0.05)
    raise TimeoutError("/data?source=csv stayed empty")


def _post(client: Any, auth: dict[str, str], sources: list[str] | None = None) -> int:
    response = client.post("/jobs", json={"sources": sources} if sources else {}, headers=auth)
    assert response.status_code == 202, response.get_json()
    return int(response.get_json()["id"])


def _assert_all_published(engine: Engine) -> None:
    with engine.connect() as conn:
        assert unpublished(conn.connection.cursor()) == []


def test_csv_is_served_while_coinpaprika_hangs(
    clean_db: Engine, client: Any, auth_headers: dict[str, str], worker_factory: Any,
    upstream: ReplayUpstream, slow_env: dict[str, str],
) -> None:
    worker_factory(slow_env, concurrency=CONCURRENCY)
    # CoinPaprika's request gets no answer until released: it hangs for as long as the test
    # needs, so "served while CoinPaprika runs" is a fact, not a race with a sleep.
    hold = upstream.hold(endpoint="coinpaprika")
    job_id = _post(client, auth_headers)
    upstream.wait_held(hold)

    seen = _watch_csv_publish(clean_db, client, job_id)
    assert seen["paprika"] == "running"  # served before the hanging source ended
    assert seen["delay"] < 3.0, seen
    csv_run = _run(clean_db, job_id, "csv")
    # The CSV run did not wait for a worker slot behind the hanging source.
    assert (csv_run["started_at"] - csv_run["job_created_at"]).total_seconds() < 3.0
    print(f"\n[publish] first CSV commit -> /data: {seen['delay'] * 1000:.0f} ms")

    # Once the CSV run has ended, a later CSV job finds nothing new, succeeds, and leaves
    # /data (and its cache key) as it was, while CoinPaprika still hangs.
    deadline = time.monotonic() + 30
    while _run(clean_db, job_id, "csv")["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _run(clean_db, job_id, "csv")["status"] == "succeeded"
    served = client.get("/data?source=csv").get_json()["data"]
    with clean_db.connect() as conn:
        version = conn.execute(text("SELECT version FROM data_version")).scalar_one()
    later = wait_for_job(client, _post(client, auth_headers, ["csv"]), timeout=30)
    assert later["status"] == "succeeded" and later["runs"][0]["inserted"] == 0
    assert _run(clean_db, job_id, "coinpaprika")["status"] == "running"
    assert client.get("/data?source=csv").get_json()["data"] == served
    with clean_db.connect() as conn:
        assert conn.execute(text("SELECT version FROM data_version")).scalar_one() == version

    assert [e["hold"] for e in upstream.held(hold)] == ["waiting"]  # one request, never retried
    upstream.release(hold)
    job = wait_for_job(client, job_id, timeout=60)
    assert job["status"] == "succeeded", job
    assert count(clean_db, "current_quotes", "source = 'coinpaprika'") == 2000
    _assert_all_published(clean_db)


def _child_talking_to(worker: Any, port: int, timeout: float = 20) -> psutil.Process:
    """The worker child with an open connection to the upstream's port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(worker.proc.pid).children(recursive=True):
            try:
                if any(c.raddr and c.raddr.port == port for c in child.net_connections("tcp")):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)
    raise TimeoutError("no worker child is talking to the upstream")


def test_csv_is_served_while_the_slow_sources_child_is_killed(
    clean_db: Engine, client: Any, auth_headers: dict[str, str], worker_factory: Any,
    upstream: ReplayUpstream, slow_env: dict[str, str],
) -> None:
    worker = worker_factory({**slow_env, "ETL_SOURCES": "coinpaprika,csv"},
                            concurrency=CONCURRENCY)
    # Both attempts of the CoinPaprika run hang until released: the one killed while its
    # request waits at the upstream, and the redelivered one.
    hold = upstream.hold(endpoint="coinpaprika")
    job_id = _post(client, auth_headers, ["coinpaprika", "csv"])
    upstream.wait_held(hold)
    child = _child_talking_to(worker, upstream.port)
    child.send_signal(signal.SIGKILL)
    child.wait(30)

    seen = _watch_csv_publish(clean_db, client, job_id)
    assert seen["paprika"] == "running", seen
    assert seen["delay"] < 3.0, seen
    print(f"\n[publish] first CSV commit -> /data (CoinPaprika's child killed): "
          f"{seen['delay'] * 1000:.0f} ms")

    upstream.release(hold)
    job = wait_for_job(client, job_id, timeout=90)
    assert job["status"] == "succeeded", job
    paprika = next(r for r in job["runs"] if r["source"] == "coinpaprika")
    assert paprika["attempts"] == 2
    assert count(clean_db, "current_quotes", "source = 'coinpaprika'") == 2000
    _assert_all_published(clean_db)
