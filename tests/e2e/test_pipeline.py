"""End to end: POST /jobs -> Redis -> real celery worker subprocess -> Postgres -> GET /data."""
from __future__ import annotations

import shutil
from typing import Any, Callable

import pytest

from tests.conftest import ALL_RAW, ROOT, WorkerProcess, count
from tests.helpers.waiting import wait_for_job

pytestmark = pytest.mark.e2e

# Data rows in the three fixture CSVs copied into data/ (header and blank lines excluded).
KAGGLE_ROWS, COINGECKO_EXPORT_ROWS, CMC_ROWS = 2991, 3776, 399
ALL_ROWS = KAGGLE_ROWS + COINGECKO_EXPORT_ROWS + CMC_ROWS


@pytest.fixture(scope="module")
def csv_worker(module_worker_factory: Callable[..., WorkerProcess],
               tmp_path_factory: pytest.TempPathFactory) -> WorkerProcess:
    """One worker for the module's tests, on a copy of data/ that none of them changes."""
    data = tmp_path_factory.mktemp("pipeline") / "data"
    shutil.copytree(ROOT / "data", data)
    return module_worker_factory({"CSV_DIR": str(data)})


def _post_job(client: Any, auth_headers: dict[str, str], sources: list[str]) -> int:
    response = client.post("/jobs", json={"sources": sources}, headers=auth_headers)
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["status"] == "queued" and body["sources"] == sources
    assert body["status_url"] == f"/jobs/{body['id']}"
    return int(body["id"])


def test_csv_job_through_a_real_worker(
    clean_db: Any, client: Any, auth_headers: dict[str, str], csv_worker: WorkerProcess
) -> None:
    job = wait_for_job(client, _post_job(client, auth_headers, ["csv"]))
    assert job["status"] == "succeeded", job
    (run,) = job["runs"]
    assert run["source"] == "csv" and run["status"] == "succeeded"
    assert (run["fetched"], run["inserted"], run["unchanged"], run["rejected"]) == (
        ALL_ROWS, ALL_ROWS, 0, 0)
    assert run["duration_ms"] is not None and run["celery_task_id"]

    assert count(clean_db, "raw_lines", "source = 'csv'") == ALL_ROWS
    assert count(clean_db, "quotes", "source = 'csv'") == ALL_ROWS
    # The alias file ties the symbol-only exports to Bitcoin, and the Kaggle file matches it
    # by symbol + name: one asset for all three files.
    assert count(clean_db, "assets") == 1
    assert count(clean_db, "quotes", "source_asset_id = 'BTC:Bitcoin'") == KAGGLE_ROWS
    assert count(clean_db, "quotes", "source_asset_id = 'BTC'") == COINGECKO_EXPORT_ROWS + CMC_ROWS

    data = client.get("/data?source=csv&total=true").get_json()
    assert data["pagination"]["total"] == 1
    (record,) = data["data"]
    assert record["symbol"] == "BTC" and record["name"] == "Bitcoin"
    # The newest CSV row is CoinMarketCap's 2026-02-09 close.
    assert record["observed_at"].startswith("2026-02-09T23:59:59.999")
    assert record["price_usd"] == "70120.7809893855"

    history = client.get("/data?symbol=btc").get_json()
    assert [r["source"] for r in history["data"]] == ["csv"]


def test_same_job_twice_changes_no_counts(
    clean_db: Any, client: Any, auth_headers: dict[str, str], csv_worker: WorkerProcess
) -> None:
    first = wait_for_job(client, _post_job(client, auth_headers, ["csv"]))
    assert first["status"] == "succeeded"
    before = {t: count(clean_db, t) for t in (ALL_RAW, "assets", "quotes")}
    second = wait_for_job(client, _post_job(client, auth_headers, ["csv"]))
    assert second["status"] == "succeeded"
    (run,) = second["runs"]
    # The checkpoint says everything was read: nothing fetched, nothing written.
    assert (run["fetched"], run["inserted"]) == (0, 0)
    assert {t: count(clean_db, t) for t in before} == before
