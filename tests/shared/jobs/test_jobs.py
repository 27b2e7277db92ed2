"""Job lifecycle in PostgreSQL: statuses, at-most-once normalize, the reaper, idempotency keys."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text, update

from shared.config import Settings, load_settings
from shared.db import unit_of_work
from shared.jobs.close import finalize_job, job_status_from_runs, reap_stale_runs
from shared.jobs.lifecycle import now_utc
from shared.jobs.submit import create_job
from shared.locks import LockKey, run_lock, try_lock, unlock
from shared.models import Run
from tests.helpers.csv_runs import HEADER, only_file, run_csv


def test_the_last_run_to_end_closes_its_job(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    only_file(csv_dir, "c.csv", HEADER + "1,Coin,CN,2021-01-01 23:59:59,1,1,1,1,1,1\n")
    from shared.ingest.execute import execute_run

    with unit_of_work(clean_db) as session:
        job = create_job(session, ["csv"], "cli").job
        job_id, run_id = job.id, job.runs[0].id
    execute_run(run_id, None, settings, clean_db)  # no normalize task: the run closes the job
    with clean_db.connect() as conn:
        job_row = conn.execute(text("SELECT status, finished_at FROM jobs WHERE id = :j"),
                               {"j": job_id}).one()
        run_end = conn.execute(text("SELECT finished_at FROM runs WHERE id = :r"),
                               {"r": run_id}).scalar_one()
    assert job_row.status == "succeeded" and job_row.finished_at >= run_end
    with unit_of_work(clean_db) as session:  # the callback that comes later changes nothing
        assert finalize_job(session, job_id) == "succeeded"
    with clean_db.connect() as conn:
        assert conn.execute(text("SELECT finished_at FROM jobs WHERE id = :j"),
                            {"j": job_id}).scalar_one() == job_row.finished_at


@pytest.mark.parametrize(("statuses", "expected"), [
    (["succeeded", "succeeded"], "succeeded"),
    (["succeeded", "failed"], "partial"),
    (["failed", "failed"], "failed"),
    (["skipped", "skipped"], "skipped"),
    (["succeeded", "skipped"], "succeeded"),
    (["failed", "skipped"], "failed"),
])
def test_job_status_from_runs(statuses: list[str], expected: str) -> None:
    assert job_status_from_runs(statuses) == expected


def test_finalize_waits_for_active_runs_and_runs_once(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    only_file(csv_dir, "c.csv", HEADER + "1,Coin,CN,2021-01-01 23:59:59,1,1,1,1,1,1\n")
    with unit_of_work(clean_db) as session:
        job = create_job(session, ["csv", "coingecko"], "cli").job
        job_id = job.id
    with unit_of_work(clean_db) as session:
        assert finalize_job(session, job_id) is None  # both runs still queued
    from shared.ingest.execute import execute_run

    csv_run = next(r for r in job.runs if r.source == "csv")
    execute_run(csv_run.id, None, settings, clean_db)
    with clean_db.connect() as conn:  # the csv run ended, the coingecko one has not
        assert conn.execute(text("SELECT status FROM jobs")).scalar_one() == "running"
    with unit_of_work(clean_db) as session:
        session.execute(update(Run).where(Run.job_id == job_id, Run.source == "coingecko")
                        .values(status="failed", error="boom", finished_at=now_utc()))
    with unit_of_work(clean_db) as session:
        assert finalize_job(session, job_id) == "partial"
    with clean_db.connect() as conn:
        first = conn.execute(text("SELECT updated_at FROM current_quotes")).scalar_one()
        finished = conn.execute(text("SELECT finished_at, error FROM jobs")).one()
    assert finished.error == "coingecko: boom"
    with unit_of_work(clean_db) as session:
        assert finalize_job(session, job_id) == "partial"  # second call: no work done
    with clean_db.connect() as conn:
        assert conn.execute(text("SELECT updated_at FROM current_quotes")).scalar_one() == first
        assert conn.execute(text("SELECT finished_at FROM jobs")).scalar_one() == \
            finished.finished_at


@pytest.fixture
def reaper_settings(base_env: dict[str, str], csv_dir: Path) -> Settings:
    """Settings under which a run silent for a minute is stale."""
    return load_settings({**base_env, "CSV_DIR": str(csv_dir), "ETL_RUN_STALE_SECONDS": "60"})


def _reap_while_held(engine: Engine, settings: Settings, lock: LockKey) -> dict[str, int]:
    """Reap while another connection holds `lock`, as a live execution would."""
    with engine.connect() as holder:
        assert try_lock(holder, lock)
        with unit_of_work(engine) as session:
            counts = reap_stale_runs(session, engine, settings)
        unlock(holder, lock)
    return counts


def test_reaper_fails_orphans_but_not_live_runs(clean_db: Engine, reaper_settings: Settings
                                                ) -> None:
    long_ago = now_utc() - timedelta(minutes=10)
    with unit_of_work(clean_db) as session:
        orphan = create_job(session, ["csv"], "cli").job
        live = create_job(session, ["coingecko"], "cli").job
        lost = create_job(session, ["coinpaprika"], "cli").job
        session.flush()
        for job in (orphan, live):
            session.execute(update(Run).where(Run.job_id == job.id).values(
                status="running", started_at=long_ago, heartbeat_at=long_ago))
        session.execute(update(Run).where(Run.job_id == lost.id).values(created_at=long_ago))
    # A live execution of coingecko holds its lock: its run must survive however stale.
    counts = _reap_while_held(clean_db, reaper_settings, run_lock("extract", "coingecko"))
    assert counts == {"runs_failed": 1, "queued_failed": 1, "jobs_finalized": 2}
    with clean_db.connect() as conn:
        rows = dict(conn.execute(text("SELECT source, status FROM runs")).all())
        jobs = dict(conn.execute(text("SELECT id, status FROM jobs")).all())
    assert rows == {"csv": "failed", "coingecko": "running", "coinpaprika": "failed"}
    assert jobs[orphan.id] == "failed" and jobs[lost.id] == "failed"
    assert jobs[live.id] == "queued"


def test_reaper_takes_the_lock_of_each_runs_kind(clean_db: Engine, reaper_settings: Settings
                                                 ) -> None:
    long_ago = now_utc() - timedelta(minutes=10)
    with unit_of_work(clean_db) as session:
        extract = create_job(session, ["coingecko"], "cli").job
        backfill = create_job(session, ["coingecko"], "backfill").job
        session.flush()
        session.execute(update(Run).where(Run.job_id == backfill.id).values(kind="backfill"))
        session.execute(update(Run).values(status="running", started_at=long_ago,
                                           heartbeat_at=long_ago))
    # A live backfill of coingecko holds its run's lock: the source's extract run is no
    # concern of that lock (and the other way round).
    counts = _reap_while_held(clean_db, reaper_settings, run_lock("backfill", "coingecko"))
    assert counts == {"runs_failed": 1, "queued_failed": 0, "jobs_finalized": 1}
    with clean_db.connect() as conn:
        rows = dict(conn.execute(text("SELECT job_id, status FROM runs")).all())
    assert rows == {extract.id: "failed", backfill.id: "running"}


def test_same_idempotency_key_returns_the_same_job(clean_db: Engine) -> None:
    with unit_of_work(clean_db) as session:
        first = create_job(session, ["csv"], "api", idempotency_key="k-1")
    with unit_of_work(clean_db) as session:
        second = create_job(session, ["csv"], "api", idempotency_key="k-1")
    assert first.created and not second.created
    assert first.job.id == second.job.id


def test_second_run_of_a_source_is_skipped_while_one_is_active(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    only_file(csv_dir, "c.csv", HEADER + "1,Coin,CN,2021-01-01 23:59:59,1,1,1,1,1,1\n")
    with clean_db.connect() as holder:
        # As if another worker were running csv.
        assert try_lock(holder, run_lock("extract", "csv"))
        run = run_csv(clean_db, settings)
        unlock(holder, run_lock("extract", "csv"))
    assert run["status"] == "skipped" and "another csv run" in run["error"]
    assert run_csv(clean_db, settings)["status"] == "succeeded"
