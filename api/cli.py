"""`flask --app api etl ...`: one-off runs, enqueueing and reaping from a shell."""
from __future__ import annotations

import json

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from shared.config import SOURCES, Settings
from shared.db import make_engine, unit_of_work
from shared.jobs import create_job, enqueue_job, finalize_job, load_job, reap_stale_runs
from shared.runs import execute_run

etl = AppGroup("etl", help="Run, queue or reap ETL jobs.")

_SOURCE_OPTION = click.option(
    "--source", "sources", multiple=True, type=click.Choice(SOURCES),
    help="Source to include (repeatable); default: ETL_SOURCES.",
)


def _settings() -> Settings:
    settings: Settings = current_app.config["SETTINGS"]
    return settings


def _job_summary(job_id: int) -> dict[str, object]:
    engine = current_app.extensions["db_engine"]
    with unit_of_work(engine) as session:
        job = load_job(session, job_id)
        assert job is not None
        return {"id": job.id, "status": job.status, "runs": [
            {"source": r.source, "status": r.status, "fetched": r.fetched,
             "inserted": r.inserted, "unchanged": r.unchanged, "rejected": r.rejected,
             "error": r.error} for r in job.runs]}


@etl.command("run")
@_SOURCE_OPTION
def run_now(sources: tuple[str, ...]) -> None:
    """Run a job in this process (no worker needed) and print its outcome as JSON."""
    settings = _settings()
    engine = make_engine(settings.database_url)
    with unit_of_work(engine) as session:
        job = create_job(session, list(sources or settings.enabled_sources), trigger="cli").job
        run_ids, job_id = [r.id for r in job.runs], job.id
    for run_id in run_ids:
        execute_run(run_id, None, settings, engine)
    with unit_of_work(engine) as session:
        finalize_job(session, job_id)
    click.echo(json.dumps(_job_summary(job_id), indent=2))
    engine.dispose()


@etl.command("enqueue")
@_SOURCE_OPTION
def enqueue(sources: tuple[str, ...]) -> None:
    """Queue a job for the workers (like POST /jobs) and print its id."""
    settings = _settings()
    engine = current_app.extensions["db_engine"]
    with unit_of_work(engine) as session:
        job = create_job(session, list(sources or settings.enabled_sources), trigger="cli").job
    enqueue_job(current_app.extensions["celery"], job)
    click.echo(job.id)


@etl.command("reap")
def reap() -> None:
    """Fail runs whose worker is gone and close jobs whose normalize never came."""
    engine = current_app.extensions["db_engine"]
    with unit_of_work(engine) as session:
        counts = reap_stale_runs(session, engine, _settings())
    click.echo(json.dumps(counts))


def init_cli(app: Flask) -> None:
    """Register the `etl` command group."""
    app.cli.add_command(etl)
