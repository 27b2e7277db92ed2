"""What `flask --app api etl` shows: ids at start, live progress bars, final counts per run."""
from __future__ import annotations

import threading
import time
from typing import Callable, TextIO

import click
from sqlalchemy import Engine
from tqdm import tqdm

from shared.db import unit_of_work
from shared.queries.job_progress import JobState, RunState, job_state

POLL_SECONDS = 0.5


def load_state(engine: Engine, job_id: int) -> JobState:
    """The job's committed state (a fresh short transaction each call)."""
    with unit_of_work(engine) as session:
        state = job_state(session, job_id)
    if state is None:
        raise click.ClickException(f"job {job_id} does not exist")
    return state


def start_line(state: JobState) -> str:
    """The first line printed: which job and runs to look for (GET /jobs/<id>, /runs/<id>)."""
    runs = ", ".join(f"run {r.id} ({r.source})" for r in state.runs)
    return f"job {state.id} ({state.trigger}): {runs}"


def _postfix(run: RunState) -> str:
    return (f"{run.status}, inserted={run.inserted:,} unchanged={run.unchanged:,} "
            f"rejected={run.rejected:,}")


class ProgressBars:
    """One tqdm bar per run (records read so far), redrawn from the run's counters."""

    def __init__(self, state: JobState, stream: TextIO) -> None:
        width = max(len(r.source) for r in state.runs) if state.runs else 0
        self.bars = {
            run.id: tqdm(desc=f"run {run.id} {run.source:<{width}}", unit=" rec",
                         unit_scale=True, position=i, leave=True, file=stream,
                         dynamic_ncols=True, mininterval=0.2)
            for i, run in enumerate(state.runs)
        }

    def update(self, state: JobState) -> None:
        """Move each bar to its run's `fetched` counter and show the other counters."""
        for run in state.runs:
            bar = self.bars.get(run.id)
            if bar is None:
                continue
            if run.fetched != bar.n:
                bar.n = run.fetched
            bar.set_postfix_str(_postfix(run), refresh=False)
            bar.refresh()

    def close(self) -> None:
        """Leave the bars on screen at their final values."""
        for bar in self.bars.values():
            bar.close()


def watch(engine: Engine, job_id: int, stream: TextIO, done: Callable[[JobState], bool],
          stop: threading.Event | None = None, timeout: float | None = None) -> JobState:
    """Poll the job's counters into progress bars until `done(state)`, `stop` or `timeout`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    state = load_state(engine, job_id)
    bars = ProgressBars(state, stream)
    try:
        while True:
            bars.update(state)
            if done(state) or (stop is not None and stop.is_set()):
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise click.ClickException(
                    f"job {job_id} still {state.status} after {timeout:.0f}s; it keeps going "
                    f"(GET /jobs/{job_id})")
            if stop is not None:
                stop.wait(POLL_SECONDS)
            else:
                time.sleep(POLL_SECONDS)
            state = load_state(engine, job_id)
    finally:
        bars.close()


class BackgroundWatch(threading.Thread):
    """`watch` in a thread, for a job this process runs itself; `finish()` draws the end."""

    def __init__(self, engine: Engine, job_id: int, stream: TextIO) -> None:
        super().__init__(name=f"progress-job-{job_id}", daemon=True)
        self.engine, self.job_id, self.stream = engine, job_id, stream
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        """Poll until told to stop (a display error must not stop the ETL)."""
        try:
            watch(self.engine, self.job_id, self.stream, lambda _s: False, self.stop)
        except Exception as exc:  # the run goes on without bars
            self.error = exc

    def finish(self) -> None:
        """Stop polling after one last refresh from the committed counters."""
        self.stop.set()
        self.join(10)


def summary_lines(state: JobState, seconds: float) -> list[str]:
    """The final report: the job's status, then one line of counts per run (and its error)."""
    lines = [f"job {state.id} {state.status} in {seconds:.1f}s"]
    width = max((len(r.source) for r in state.runs), default=0)
    for run in state.runs:
        took = f"  {run.seconds:.1f}s" if run.seconds is not None else ""
        lines.append(
            f"  run {run.id} {run.source:<{width}}  {run.status:<9}  fetched {run.fetched:,}  "
            f"inserted {run.inserted:,}  unchanged {run.unchanged:,}  "
            f"rejected {run.rejected:,}{took}")
        if run.error:
            lines.append(f"    error: {run.error}")
    return lines


def as_dict(state: JobState) -> dict[str, object]:
    """The job as JSON-ready data (`--json`)."""
    return {"id": state.id, "status": state.status, "runs": [
        {"id": r.id, "source": r.source, "status": r.status, "fetched": r.fetched,
         "inserted": r.inserted, "unchanged": r.unchanged, "rejected": r.rejected,
         "error": r.error} for r in state.runs]}


def exit_code(state: JobState) -> int:
    """1 when a run failed (or the job did), else 0."""
    return 1 if state.failed_runs or state.status == "failed" else 0
