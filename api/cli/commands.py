"""`flask --app api etl ...`: one-off runs, enqueueing and reaping from a shell."""
from __future__ import annotations

import json
import sys
import time

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import Engine
from tqdm.contrib.logging import logging_redirect_tqdm

from api.broker import get_celery
from api.cli.progress import (
    BackgroundWatch, as_dict, exit_code, load_state, start_line, summary_lines, watch,
)
from shared.config import SOURCES, Settings
from shared.db import make_engine, unit_of_work
from shared.jobs.close import finalize_job, reap_stale_runs
from shared.jobs.submit import JobNotQueued, create_job, submit_job
from shared.ingest.execute import execute_run
from shared.db import SessionPoolingRequired, require_session_pooling

etl = AppGroup("etl", help="Run, queue or reap ETL jobs.")

_SOURCE_OPTION = click.option(
    "--source", "sources", multiple=True, type=click.Choice(SOURCES),
    help="Source to include (repeatable); default: ETL_SOURCES.",
)
_JSON_OPTION = click.option(
    "--json", "as_json", is_flag=True,
    help="Print the final outcome as JSON on stdout (the ids and bars go to stderr).",
)


def _settings() -> Settings:
    settings: Settings = current_app.config["SETTINGS"]
    return settings


def _finish(engine: Engine, job_id: int, started: float, as_json: bool) -> None:
    """Print the job's final counts (text or JSON) and exit 1 when a run failed."""
    state = load_state(engine, job_id)
    if as_json:
        click.echo(json.dumps(as_dict(state), indent=2))
    else:
        click.echo("\n".join(summary_lines(state, time.monotonic() - started)))
    click.get_current_context().exit(exit_code(state))


@etl.command("run")
@_SOURCE_OPTION
@_JSON_OPTION
def run_now(sources: tuple[str, ...], as_json: bool) -> None:
    """Run a job in this process (no worker needed), with progress; exit 1 if a run failed."""
    settings = _settings()
    _require_sessions(settings, "flask etl run")
    engine = make_engine(settings.database_url)
    started = time.monotonic()
    try:
        with unit_of_work(engine) as session:
            job = create_job(session, list(sources or settings.enabled_sources),
                             trigger="cli").job
            run_ids, job_id = [r.id for r in job.runs], job.id
        click.echo(start_line(load_state(engine, job_id)), err=as_json)
        # The runs go on in this thread; another one polls their committed counters.
        progress = BackgroundWatch(engine, job_id, sys.stderr)
        with logging_redirect_tqdm():
            progress.start()
            try:
                for run_id in run_ids:
                    execute_run(run_id, None, settings, engine)
            except KeyboardInterrupt:
                progress.finish()
                click.echo(f"interrupted: runs not yet ended stay for the reaper "
                           f"(flask --app api etl reap); GET /jobs/{job_id}", err=True)
                raise click.exceptions.Exit(130) from None
            finally:
                progress.finish()
        with unit_of_work(engine) as session:
            finalize_job(session, job_id)
        _finish(engine, job_id, started, as_json)
    finally:
        engine.dispose()


@etl.command("enqueue")
@_SOURCE_OPTION
@click.option("--wait", is_flag=True,
              help="Show the workers' progress until the job ends; exit 1 if a run failed.")
@click.option("--timeout", type=float, default=None,
              help="With --wait: give up waiting after this many seconds (exit 1).")
@_JSON_OPTION
def enqueue(sources: tuple[str, ...], wait: bool, timeout: float | None, as_json: bool) -> None:
    """Queue a job for the workers (like POST /jobs) and print its id."""
    settings = _settings()
    engine = current_app.extensions["db_engine"]
    started = time.monotonic()
    try:
        with unit_of_work(engine) as session:
            job = submit_job(session, get_celery(), list(sources or settings.enabled_sources),
                             trigger="cli").job
    except JobNotQueued as exc:
        # The job is committed as failed (GET /jobs/<id> says why); a one-line error, exit 1.
        raise click.ClickException(str(exc)) from None
    if not wait:
        click.echo(job.id)
        return
    click.echo(start_line(load_state(engine, job.id)), err=as_json)
    watch(engine, job.id, sys.stderr, lambda state: state.terminal,
          timeout=timeout)
    _finish(engine, job.id, started, as_json)


@etl.command("reap")
def reap() -> None:
    """Fail runs whose worker is gone and close jobs whose normalize never came."""
    _require_sessions(_settings(), "flask etl reap")
    engine = current_app.extensions["db_engine"]
    with unit_of_work(engine) as session:
        counts = reap_stale_runs(session, engine, _settings())
    click.echo(json.dumps(counts))


def _require_sessions(settings: Settings, who: str) -> None:
    """Exit 1 when DATABASE_URL is a transaction pool: runs and the reaper take session
    advisory locks (shared.db)."""
    try:
        require_session_pooling(settings.database_url, who)
    except SessionPoolingRequired as exc:
        raise click.ClickException(str(exc)) from None


def init_cli(app: Flask) -> None:
    """Register the `etl` command group."""
    app.cli.add_command(etl)
