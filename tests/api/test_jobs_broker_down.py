"""Job submission with the broker down: POST /jobs and `flask etl enqueue` fail the job cleanly."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from shared.config import Settings, load_settings
from shared.jobs.submit import NOT_QUEUED
from tests.conftest import count

# Nothing listens on port 1: every send is refused at once. The result backend's retries
# (RESULT_BACKEND_MAX_RETRIES, 1 s apart: 20 s by default) come down to one.
DEAD_REDIS = {"REDIS_URL": "redis://127.0.0.1:1/0", "RESULT_BACKEND_MAX_RETRIES": "1"}


@pytest.fixture
def broker_down_app(base_env: dict[str, str], csv_dir: Path) -> Any:
    """The app on the test database with a broker that refuses connections."""
    from api import create_app

    settings: Settings = load_settings({**base_env, "CSV_DIR": str(csv_dir), **DEAD_REDIS})
    return create_app({"TESTING": True, "RATELIMIT_ENABLED": False}, settings=settings)


def _failed_unsent(engine: Engine, trigger: str) -> None:
    """Exactly one job of `trigger`, failed with the not-queued reason, and its runs too."""
    assert count(engine, "jobs", "trigger = :t", t=trigger) == 1
    assert count(engine, "jobs", "trigger = :t AND status = 'failed' AND error = :e "
                 "AND finished_at IS NOT NULL", t=trigger, e=NOT_QUEUED) == 1
    assert count(engine, "runs", "status <> 'failed' OR error <> :e", e=NOT_QUEUED) == 0
    assert count(engine, "runs") == 1


def test_post_jobs_is_503_and_the_job_is_failed(
    clean_db: Engine, broker_down_app: Any, auth_headers: dict[str, str]
) -> None:
    response = broker_down_app.test_client().post("/jobs", json={"sources": ["csv"]},
                                                  headers=auth_headers)
    assert response.status_code == 503
    assert response.get_json()["message"] == NOT_QUEUED
    _failed_unsent(clean_db, "api")


def test_cli_enqueue_exits_1_and_the_job_is_failed_not_left_queued(
    clean_db: Engine, broker_down_app: Any
) -> None:
    result = broker_down_app.test_cli_runner().invoke(
        args=["etl", "enqueue", "--source", "csv"])
    assert result.exit_code == 1, result.output
    assert NOT_QUEUED in result.output and "Traceback" not in result.output
    _failed_unsent(clean_db, "cli")
    assert count(clean_db, "jobs", "status = 'queued'") == 0
