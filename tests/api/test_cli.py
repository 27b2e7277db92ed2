"""`flask etl run` runs a job in-process on the real database."""
from __future__ import annotations

import json
from typing import Any

from tests.conftest import count


def test_etl_run_loads_the_csv_files(clean_db: Any, app: Any) -> None:
    result = app.test_cli_runner().invoke(args=["etl", "run", "--source", "csv"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["status"] == "succeeded"
    assert summary["runs"][0]["inserted"] == 2991 + 3776 + 399
    assert count(clean_db, "jobs", "trigger = 'cli'") == 1
    again = json.loads(app.test_cli_runner().invoke(args=["etl", "run", "--source", "csv"]).output)
    assert again["runs"][0]["inserted"] == 0


def test_etl_reap_prints_counts(clean_db: Any, app: Any) -> None:
    result = app.test_cli_runner().invoke(args=["etl", "reap"])
    assert result.exit_code == 0
    assert json.loads(result.output) == {"runs_failed": 0, "queued_failed": 0,
                                         "jobs_finalized": 0}
