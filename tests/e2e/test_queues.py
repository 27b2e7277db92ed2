"""Per-source queues on two worker nodes: CSV runs only where the files are, backfills apart."""
from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from api import create_app
from shared import task_names
from tests.api.helpers import replay_settings
from tests.conftest import count, queue_lengths, queued_messages
from tests.faults.conftest import freeze_source_run
from tests.helpers.waiting import poll, wait_for_job
from tests.upstream import ReplayUpstream

pytestmark = pytest.mark.e2e

CSV_ROWS = 2991 + 3776 + 399
# What the API-side node consumes: everything but the CSV queue.
API_QUEUES = tuple(q for q in task_names.queues() if q != "csv")


def _received(log: str) -> dict[str, str]:
    """Task id -> task name of every task a worker log says it received."""
    return {task_id: name for name, task_id in
            re.findall(r"Task ([\w.]+)\[([0-9a-f-]{36})\] received", log)}


def test_csv_runs_only_on_the_csv_node_and_a_backfill_passes_a_held_csv_run(
    clean_db: Engine, base_env: dict[str, str], csv_dir: Path, tmp_path: Path,
    upstream: ReplayUpstream, worker_factory: Any, auth_headers: dict[str, str],
) -> None:
    sources = {"COINGECKO_BASE_URL": upstream.coingecko_base_url,
               "COINPAPRIKA_BASE_URL": upstream.coinpaprika_base_url,
               "COINGECKO_RATE_LIMIT": "1000", "COINPAPRIKA_RATE_LIMIT": "1000",
               "HTTP_TIMEOUT_SECONDS": "3", "HTTP_MAX_RETRIES": "2",
               "HTTP_BACKOFF_MAX_SECONDS": "1",
               # Small, slowed batches: the CSV run is still going when it is frozen.
               "CSV_BATCH_ROWS": "500", "ETL_BATCH_DELAY_SECONDS": "0.2"}
    # Two hosts: only the CSV node has the files; the other's CSV_DIR does not exist, so a CSV
    # run there would fail (and show in the job).
    csv_node = worker_factory({**sources, "CSV_DIR": str(csv_dir)}, queues=("csv",),
                              concurrency=1)
    api_node = worker_factory({**sources, "CSV_DIR": str(tmp_path / "no-csv-here")},
                              queues=API_QUEUES, concurrency=3)
    settings = replay_settings(base_env, csv_dir, upstream)
    client = create_app({"TESTING": True, "RATELIMIT_ENABLED": False},
                        settings=settings).test_client()

    def post_job(sources: list[str]) -> int:
        response = client.post("/jobs", json={"sources": sources}, headers=auth_headers)
        assert response.status_code == 202, response.get_json()
        return int(response.get_json()["id"])

    first = post_job(["csv", "coingecko", "coinpaprika"])
    # The CSV run is held mid-way on its node (the child executing it frozen, its lock held),
    # once marked running: its lock is taken just before, so a child frozen at once could
    # hold a run still queued.
    poll(lambda: count(clean_db, "runs", "source = 'csv' AND status = 'running'"),
         lambda n: n == 1, 60, "the CSV run running", 0.05)
    frozen = freeze_source_run(clean_db, csv_node, "csv")
    try:
        assert count(clean_db, "runs", "source = 'csv' AND status = 'running'") == 1
        # The API sources' runs end meanwhile, on the other node.
        poll(lambda: count(clean_db, "runs", "job_id = :j AND source <> 'csv' AND "
                           "status = 'succeeded'", j=first),
             lambda n: n == 2, 60, "the API sources' runs")
        # A second CSV job waits on the csv queue behind the held run (one child, busy).
        second = post_job(["csv"])
        poll(lambda: queued_messages(settings.redis_url, "csv"), lambda n: n == 1, 10,
             "the second CSV message queued")
        # A backfill is not behind either: its own queue, consumed by the other node.
        since = datetime.now(timezone.utc) - timedelta(days=20)
        asked = time.monotonic()
        response = client.post("/backfills", headers=auth_headers, json={
            "source": "coingecko", "top": 2, "since": since.isoformat()})
        assert response.status_code == 202, response.get_json()
        backfill = poll(lambda: client.get(response.get_json()["status_url"]).get_json(),
                        lambda b: b["status"] not in ("queued", "running"), 60,
                        "the backfill")
        assert backfill["status"] == "succeeded", backfill["chunk_counts"]
        assert backfill["inserted"] > 0
        print(f"backfill done in {time.monotonic() - asked:.1f} s beside the held CSV run")
        # Done while the CSV run was still held and the second CSV job still waited.
        assert count(clean_db, "runs", "source = 'csv' AND status = 'running'") == 1
        assert queued_messages(settings.redis_url, "csv") == 1
    finally:
        frozen.resume()

    jobs = [wait_for_job(client, job_id, timeout=120) for job_id in (first, second)]
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"], jobs
    csv_runs = [run for job in jobs for run in job["runs"] if run["source"] == "csv"]
    assert [(r["status"], r["inserted"]) for r in csv_runs] == [("succeeded", CSV_ROWS),
                                                                ("succeeded", 0)]
    poll(lambda: queue_lengths(settings.redis_url), lambda q: not any(q.values()), 30,
         "every queue empty")

    # Which node ran what, from their logs: every task on the queue its node consumes.
    on_csv, on_api = _received(csv_node.log_text()), _received(api_node.log_text())
    assert not set(on_csv) & set(on_api)
    assert set(on_csv.values()) == {task_names.extract("csv")}
    assert {task_names.extract("coingecko"), task_names.extract("coinpaprika"),
            task_names.NORMALIZE, task_names.BACKFILL_RUN} <= set(on_api.values())
    assert task_names.extract("csv") not in on_api.values()
    with clean_db.connect() as conn:
        task_ids = dict(conn.execute(text(
            "SELECT celery_task_id, source FROM runs WHERE job_id IN (:a, :b)"),
            {"a": first, "b": second}).all())
    assert {i for i, s in task_ids.items() if s == "csv"} == set(on_csv)
    assert {i for i, s in task_ids.items() if s != "csv"} <= set(on_api)
    print(f"csv node ran {len(on_csv)} tasks, the other {len(on_api)}: "
          f"{sorted(set(on_api.values()))}")
