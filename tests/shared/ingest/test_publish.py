"""Publishing with each batch: rows served from their commit, newest observed_at wins, and the
data version (the /data cache key) moves only when a current_quotes row changes."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text

from shared.config import Settings
from shared.db import unit_of_work
from shared.jobs.submit import create_job
from shared.ingest.publish import publish_assets, unpublished
from shared.ingest.execute import execute_run
from tests.helpers.csv_runs import HEADER, only_file


def _row(n: int, day: int, close: str) -> str:
    return f"{n},Testcoin,TST,2021-01-{day:02d} 23:59:59,110,90,95,{close},1000,5000\n"


def _version(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT version FROM data_version")).scalar_one())


def _current(engine: Engine) -> tuple[str, str]:
    with engine.connect() as conn:
        observed, price = conn.execute(text(
            "SELECT observed_at, price_usd FROM current_quotes WHERE source = 'csv'")).one()
    return observed.date().isoformat(), str(price)


def _run_only(engine: Engine, settings: Settings) -> tuple[int, str]:
    """A csv run executed without its job's normalize task: (run id, the job's status)."""
    with unit_of_work(engine) as session:
        job = create_job(session, ["csv"], "cli").job
        run_id, job_id = job.runs[0].id, job.id
    execute_run(run_id, None, settings, engine)
    with engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM jobs WHERE id = :j"), {"j": job_id})
        return run_id, str(status.scalar_one())


def test_a_run_publishes_at_its_commit_without_normalize(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    only_file(csv_dir, "t.csv", HEADER + _row(1, 1, "10") + _row(2, 3, "30") + _row(3, 2, "20"))
    before = _version(clean_db)
    _run, job_status = _run_only(clean_db, settings)
    # No normalize task ran: the rows are served from the run's commit, and the job's last
    # run to end closed the job itself.
    assert job_status == "succeeded"
    assert _current(clean_db) == ("2021-01-03", "30")  # the newest, not the last line
    assert _version(clean_db) != before
    with clean_db.connect() as conn:
        assert unpublished(conn.connection.cursor()) == []


def test_runs_that_bring_nothing_newer_leave_current_and_version_alone(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    path = only_file(csv_dir, "t.csv", HEADER + _row(1, 5, "50"))
    _run_only(clean_db, settings)
    version = _version(clean_db)

    _run_only(clean_db, settings)  # nothing new in the file
    assert _version(clean_db) == version

    # An older day arrives later: stored, but current keeps the newest.
    with path.open("a") as handle:
        handle.write(_row(2, 4, "40"))
    _run_only(clean_db, settings)
    assert _current(clean_db) == ("2021-01-05", "50")
    assert _version(clean_db) == version

    # Publishing the same assets again (a redelivered batch) changes nothing either.
    with clean_db.connect() as conn:
        asset_id = conn.execute(text("SELECT asset_id FROM current_quotes")).scalar_one()
        cursor = conn.connection.cursor()
        assert publish_assets(cursor, "csv", [asset_id]) == 0
        conn.connection.commit()
    assert _version(clean_db) == version

    with path.open("a") as handle:
        handle.write(_row(3, 6, "60"))
    _run_only(clean_db, settings)
    assert _current(clean_db) == ("2021-01-06", "60")
    assert _version(clean_db) != version
