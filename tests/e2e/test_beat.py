"""Beat enqueues a job right after start, so a fresh stack fills itself."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, count

pytestmark = pytest.mark.e2e


def test_beat_fills_a_fresh_stack_without_any_request(
    clean_db: Any, client: Any, worker_factory: Any, csv_dir: Path, base_env: dict[str, str],
    tmp_path: Path,
) -> None:
    env = {"CSV_DIR": str(csv_dir), "ETL_SOURCES": "csv", "ETL_SCHEDULE_SECONDS": "300"}
    worker = worker_factory(env)
    beat_log = (tmp_path / "beat.log").open("wb")
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO",
         "-s", str(tmp_path / "beat-schedule")],
        cwd=ROOT, env={**worker.env, **env}, stdout=beat_log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if count(clean_db, "jobs", "trigger = 'beat' AND status = 'succeeded'"):
                break
            time.sleep(0.5)
        assert count(clean_db, "jobs", "trigger = 'beat' AND status = 'succeeded'") == 1
        body = client.get("/data?symbol=BTC").get_json()
        assert body["pagination"]["total"] == 1 and body["data"][0]["source"] == "csv"
    finally:
        beat.terminate()
        beat.wait(10)
        beat_log.close()
