"""CSV runs in-process: a file of Kaggle-format rows, then one csv job executed and finalized."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from shared.config import Settings
from shared.db import unit_of_work
from shared.jobs.close import finalize_job
from shared.jobs.submit import create_job
from shared.ingest.execute import execute_run

HEADER = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap\n"


def csv_row(n: int, day: int, close: str = "100.5") -> str:
    """Line `n` of the test coin's file: its close on 2021-01-<day>."""
    return f"{n},Testcoin,TST,2021-01-{day:02d} 23:59:59,110,90,95,{close},1000,5000\n"


def run_csv(engine: Engine, settings: Settings) -> dict[str, Any]:
    """Create a csv job, execute its run in-process, finalize; return the run row."""
    with unit_of_work(engine) as session:
        job = create_job(session, ["csv"], "cli").job
        run_id, job_id = job.runs[0].id, job.id
    execute_run(run_id, None, settings, engine)
    with unit_of_work(engine) as session:
        finalize_job(session, job_id)
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM runs WHERE id = :id"), {"id": run_id})
                    .mappings().one())


def only_file(csv_dir: Path, name: str, body: str) -> Path:
    """Leave exactly one CSV file (plus the alias file) in `csv_dir`."""
    for path in csv_dir.glob("*.csv"):
        if path.name != "asset_aliases.csv":
            path.unlink()
    target = csv_dir / name
    target.write_text(body)
    return target
