"""`flask etl run|enqueue|reap` on the real database: ids first, progress, counts, exit code."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import ROOT, count

START = re.compile(r"^job (\d+) \(cli\): run (\d+) \(csv\)$")
# A bar redraw: "run 7 csv: 30.0k rec [00:01, 25.1k rec/s, running, inserted=30,000 ..."
BAR = re.compile(r"run (\d+) csv: [^\[]*\[[^\]]*?(\w+), inserted=([\d,]+) unchanged=([\d,]+) "
                 r"rejected=([\d,]+)\]")


def test_etl_run_loads_the_csv_files(clean_db: Any, app: Any) -> None:
    result = app.test_cli_runner().invoke(args=["etl", "run", "--source", "csv", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeeded"
    assert summary["runs"][0]["inserted"] == 2991 + 3776 + 399
    assert count(clean_db, "jobs", "trigger = 'cli'") == 1
    again = app.test_cli_runner().invoke(args=["etl", "run", "--source", "csv", "--json"])
    assert json.loads(again.stdout)["runs"][0]["inserted"] == 0
    # The ids went to stderr with --json, so stdout stays one JSON document.
    assert START.match(again.stderr.splitlines()[0]), again.stderr


def test_etl_reap_prints_counts(clean_db: Any, app: Any) -> None:
    result = app.test_cli_runner().invoke(args=["etl", "reap"])
    assert result.exit_code == 0
    assert json.loads(result.output) == {"runs_failed": 0, "queued_failed": 0,
                                         "jobs_finalized": 0}


def _big_csv(folder: Path, lines: int) -> Path:
    """A Kaggle-format file of `lines` hourly BTC rows (every line a distinct quote)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "asset_aliases.csv").write_text(
        (ROOT / "data" / "asset_aliases.csv").read_text())
    start = datetime(1990, 1, 1)
    rows = ["SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap"]
    for i in range(lines):
        when = (start + timedelta(hours=i)).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(f"{i + 1},Bitcoin,BTC,{when},{101 + i % 7}.5,99.25,100.0,{100 + i % 5}.75,"
                    "0.0,1603768864.5")
    path = folder / "kaggle_srk_coin_Bitcoin.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _flask(env: dict[str, str], *args: str, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flask", "--app", "api", "etl", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _bars(stderr: str) -> list[tuple[int, str, int]]:
    """(run id, status, inserted) of every progress redraw, in order."""
    return [(int(m[1]), m[2], int(m[3].replace(",", "")))
            for m in BAR.finditer(stderr.replace("\r", "\n"))]


def _check_output(result: subprocess.CompletedProcess[str], engine: Any, status: str
                  ) -> tuple[int, int, list[tuple[int, str, int]]]:
    """The ids line comes first and names the job's real run; the last lines are the counts."""
    lines = result.stdout.splitlines()
    first = START.match(lines[0])
    assert first, result.stdout
    job_id, run_id = int(first[1]), int(first[2])
    assert count(engine, "runs", "id = :r AND job_id = :j", r=run_id, j=job_id) == 1
    assert lines[1].startswith(f"job {job_id} {status if status != 'failed' else ''}"), lines
    assert re.match(rf"^  run {run_id} csv\s+{status}\s+fetched [\d,]+\s+inserted [\d,]+\s+"
                    r"unchanged [\d,]+\s+rejected [\d,]+", lines[2]), lines
    return job_id, run_id, _bars(result.stderr)


@pytest.mark.slow
@pytest.mark.processes
def test_etl_run_shows_ids_progress_and_final_counts(
    clean_db: Any, base_env: dict[str, str], tmp_path: Path
) -> None:
    _big_csv(tmp_path / "data", 60_000)
    env = {**os.environ, **base_env, "CSV_DIR": str(tmp_path / "data"),
           "CSV_BATCH_ROWS": "8000", "ETL_BATCH_DELAY_SECONDS": "0.3"}
    result = _flask(env, "run", "--source", "csv")
    assert result.returncode == 0, result.stdout + result.stderr
    job_id, run_id, bars = _check_output(result, clean_db, "succeeded")
    assert "fetched 60,000  inserted 60,000  unchanged 0  rejected 0" in result.stdout
    # Progress moved while the run was active: several distinct counts seen as `running`.
    running = {inserted for rid, status, inserted in bars if rid == run_id
               and status == "running" and 0 < inserted < 60_000}
    assert len(running) >= 3, result.stderr[-2000:]
    assert bars[-1] == (run_id, "succeeded", 60_000)


@pytest.mark.slow
@pytest.mark.processes
def test_etl_run_exits_nonzero_when_the_run_fails(
    clean_db: Any, base_env: dict[str, str], tmp_path: Path
) -> None:
    _big_csv(tmp_path / "data", 12_000)
    env = {**os.environ, **base_env, "CSV_DIR": str(tmp_path / "data"),
           "FAIL_AFTER_N_RECORDS_CSV": "5000"}
    result = _flask(env, "run", "--source", "csv")
    assert result.returncode == 1, result.stdout + result.stderr
    job_id, run_id, _bars_seen = _check_output(result, clean_db, "failed")
    assert f"job {job_id} failed" in result.stdout
    assert "error: csv: FAIL_AFTER_N_RECORDS=5000" in result.stdout


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("fail_after, status, code", [(None, "succeeded", 0),
                                                      ("5000", "failed", 1)])
def test_etl_enqueue_wait_follows_a_real_worker(
    clean_db: Any, base_env: dict[str, str], tmp_path: Path,
    worker_factory: Callable[..., Any], fail_after: str | None, status: str, code: int,
) -> None:
    """`etl enqueue --wait`: the workers run the job; the CLI polls PostgreSQL and reports."""
    _big_csv(tmp_path / "data", 40_000)
    worker_env = {"CSV_DIR": str(tmp_path / "data"), "CSV_BATCH_ROWS": "8000",
                  "ETL_BATCH_DELAY_SECONDS": "0.3"}
    if fail_after:
        worker_env["FAIL_AFTER_N_RECORDS_CSV"] = fail_after
    worker_factory(worker_env, concurrency=1)
    env = {**os.environ, **base_env, "PYTHONPATH": str(ROOT)}
    result = _flask(env, "enqueue", "--wait", "--timeout", "90", "--source", "csv")
    assert result.returncode == code, result.stdout + result.stderr
    job_id, run_id, bars = _check_output(result, clean_db, status)
    assert count(clean_db, "jobs", "id = :j AND status = :s", j=job_id, s=status) == 1
    expected = 40_000 if fail_after is None else 5000
    assert f"fetched {expected:,}  inserted {expected:,}" in result.stdout
    assert bars[-1] == (run_id, status, expected)
    if fail_after is None:
        assert len({n for _r, s, n in bars if s == "running" and 0 < n < expected}) >= 2
