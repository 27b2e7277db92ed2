"""Migration 0017 gives runs a kind: a backfill's run names its real source, and goes back."""
from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.helpers.migrations import flask_db, scratch_database

# Starts real processes (`flask db` on a scratch database): not in the fast subset.
pytestmark = pytest.mark.processes

_JOB = text("INSERT INTO jobs (status, sources, trigger) VALUES ('running', :s, :t) RETURNING id")
_RUN = text("INSERT INTO runs (job_id, source, status) VALUES (:j, :s, :st) RETURNING id")
_RUNS = "SELECT r.source, r.kind, r.status, j.sources FROM runs r JOIN jobs j ON j.id = r.job_id "
_INDEX = "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'uq_runs_one_running%'"


def test_0017_splits_the_backfill_suffix_into_kind_and_goes_down() -> None:
    with scratch_database() as (url, engine):
        flask_db(url, "upgrade", "0016")
        with engine.begin() as conn:
            # A backfill running beside the source's own extract run, as 0014 stored it.
            backfill_job = conn.execute(_JOB, {"s": ["coingecko-backfill"],
                                               "t": "backfill"}).scalar_one()
            backfill_run = conn.execute(_RUN, {"j": backfill_job, "s": "coingecko-backfill",
                                               "st": "running"}).scalar_one()
            beat_job = conn.execute(_JOB, {"s": ["coingecko", "csv"], "t": "beat"}).scalar_one()
            for source in ("coingecko", "csv"):
                conn.execute(_RUN, {"j": beat_job, "s": source, "st": "running"})
        flask_db(url, "upgrade", "0017")
        with engine.begin() as conn:
            rows = conn.execute(text(_RUNS + "ORDER BY r.id")).all()
            assert [tuple(row) for row in rows] == [
                ("coingecko", "backfill", "running", ["coingecko"]),
                ("coingecko", "extract", "running", ["coingecko", "csv"]),
                ("csv", "extract", "running", ["coingecko", "csv"])]
            assert conn.execute(text(_INDEX)).scalars().all() == [
                "uq_runs_one_running_per_source_kind"]
            # New rows are extract runs unless they say otherwise.
            queued = conn.execute(_RUN, {"j": backfill_job, "s": "csv", "st": "queued"})
            assert conn.execute(text("SELECT kind FROM runs WHERE id = :i"),
                                {"i": queued.scalar_one()}).scalar_one() == "extract"
        # Still one running run per source and kind.
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("UPDATE runs SET status = 'running' WHERE job_id = :j "
                              "AND source = 'csv'"), {"j": backfill_job})
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("UPDATE runs SET kind = 'other' WHERE id = :i"),
                         {"i": backfill_run})
        flask_db(url, "downgrade", "0016")
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT r.source, r.status, j.sources FROM runs r JOIN jobs j "
                "ON j.id = r.job_id WHERE r.id = :i"), {"i": backfill_run}).all()
            assert [tuple(row) for row in rows] == [
                ("coingecko-backfill", "running", ["coingecko-backfill"])]
            assert conn.execute(text(_INDEX)).scalars().all() == [
                "uq_runs_one_running_per_source"]
        flask_db(url, "upgrade", "head")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT source, kind FROM runs WHERE id = :i"),
                                {"i": backfill_run}).one() == ("coingecko", "backfill")
