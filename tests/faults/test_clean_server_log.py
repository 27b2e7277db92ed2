"""An unchanged re-run of every source leaves no ERROR in the PostgreSQL server's log.

The loader decides up front whether a batch's rows may be stored already and stages those,
instead of letting a COPY fail on the primary key and falling back: to an operator watching
the database log, a healthy run must not look like a failure. The server is this test's own,
so its log holds only this test's statements.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from shared.config import load_settings
from tests.conftest import BROKER_PREFIX, TEST_TOKEN
from tests.helpers.waiting import wait_for_job
from tests.upstream import ReplayUpstream

pytestmark = pytest.mark.faults


def _error_lines(log: Path, offset: int) -> list[str]:
    lines = log.read_text(errors="replace")[offset:].splitlines()
    return [line for line in lines if " ERROR: " in line or line.startswith("ERROR:")]


def test_unchanged_rerun_of_all_sources_logs_no_error(
    own_postgres: tuple[Path, str], redis_url: str, clean_db: Any, csv_dir: Path,
    worker_factory: Any, upstream: ReplayUpstream,
) -> None:
    from api import create_app

    var_dir, db_url = own_postgres
    log = var_dir / "pg" / "postgres.log"
    settings = load_settings({"DATABASE_URL": db_url, "REDIS_URL": redis_url,
                              "API_TOKEN": TEST_TOKEN, "CSV_DIR": str(csv_dir),
                              "BROKER_KEY_PREFIX": BROKER_PREFIX})
    client = create_app({"TESTING": True}, settings=settings).test_client()
    auth = {"Authorization": f"Bearer {TEST_TOKEN}"}
    worker_factory({
        "DATABASE_URL": db_url, "CSV_DIR": str(csv_dir),
        "COINGECKO_BASE_URL": upstream.coingecko_base_url,
        "COINPAPRIKA_BASE_URL": upstream.coinpaprika_base_url,
        "COINGECKO_RATE_LIMIT": "1000", "COINPAPRIKA_RATE_LIMIT": "1000",
    }, concurrency=4)

    def job() -> dict[str, Any]:
        response = client.post("/jobs", json={}, headers=auth)
        assert response.status_code == 202, response.get_json()
        body = wait_for_job(client, response.get_json()["id"], timeout=120)
        assert body["status"] == "succeeded", body
        return {r["source"]: r["inserted"] for r in body["runs"]}

    start = len(log.read_text(errors="replace"))
    first = job()
    assert first["coingecko"] == 250 and first["coinpaprika"] == 2000 and first["csv"] > 0
    assert _error_lines(log, start) == []  # nothing stored yet: every COPY went straight in

    rerun_start = len(log.read_text(errors="replace"))
    assert job() == {"coingecko": 0, "coinpaprika": 0, "csv": 0}
    assert _error_lines(log, rerun_start) == []

    # The log does show a failed statement: the check above can see one.
    engine = create_engine(db_url)
    with pytest.raises(DBAPIError), engine.connect() as conn:
        conn.execute(text("SELECT 1 / 0"))
    engine.dispose()
    assert any("division by zero" in line for line in _error_lines(log, rerun_start))
