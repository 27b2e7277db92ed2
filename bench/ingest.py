"""One CSV job through the real task code, in its own process: `python -m bench.ingest DIR`.

Prints one JSON line: seconds (create_job + execute_run + finalize_job, as the worker runs
them), the process's peak RSS, the run's counters, and when the run's rows became visible to
`/data` (the commits that moved the data version, heard on its NOTIFY channel, in seconds
from the job's start). A separate process per measurement
gives a clean ru_maxrss and no warm caches carried over from a previous case.

Before the timed job the process runs one job on an empty directory, on the same engine: a
worker child lives across tasks, so every run but its first finds SQLAlchemy's statement
cache (per engine) warm. Cold, the ORM compiled each statement of job creation, claim, end
and finalize once more (~35 of the ~75 ms a run with nothing new took).
"""
from __future__ import annotations

import json
import os
import resource
import select
import sys
import tempfile
import threading
import time

from sqlalchemy import Engine, text
from sqlalchemy.orm import configure_mappers

from bench.cpu import backend_cpu_seconds
from shared.config import Settings, load_settings
from shared.db import make_engine, unit_of_work
from shared.jobs.close import finalize_job
from shared.jobs.submit import create_job
from shared.ingest.execute import execute_run


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_job(engine: Engine, settings: Settings) -> tuple[int, str | None]:
    """One csv job as the worker runs it: (run id, job status)."""
    with unit_of_work(engine) as session:
        job = create_job(session, ["csv"], "cli").job
        run_id, job_id = job.runs[0].id, job.id
    execute_run(run_id, None, settings, engine)
    with unit_of_work(engine) as session:
        return run_id, finalize_job(session, job_id)


class PublishListener(threading.Thread):
    """LISTENs on data_version (migration 0007) and notes when each publish committed."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(daemon=True)
        self.conn = engine.raw_connection()
        self.conn.driver_connection.autocommit = True
        with self.conn.cursor() as cursor:
            cursor.execute("LISTEN data_version")
        self.times: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        """Collect notification times until stopped."""
        driver = self.conn.driver_connection
        while not self.stopping.is_set():
            if select.select([driver], [], [], 0.05)[0]:
                driver.poll()
                now = time.perf_counter()
                while driver.notifies:
                    driver.notifies.pop()
                    self.times.append(now)

    def stop(self) -> list[float]:
        """Stop listening; the notification times."""
        self.stopping.set()
        self.join(5)
        self.conn.close()
        return self.times


def main(csv_dir: str) -> int:
    """Run one csv job on the files in `csv_dir` and print what it took."""
    settings = load_settings({**os.environ, "CSV_DIR": csv_dir})
    engine = make_engine(settings.database_url)
    database = engine.url.database or ""
    # A worker process is long-lived: what it does once per process (configure the ORM
    # mappers, open pooled connections, compile its statements) is not part of a run's cost.
    configure_mappers()
    with tempfile.TemporaryDirectory() as empty:
        _run_job(engine, load_settings({**os.environ, "CSV_DIR": empty}))
    cpu_before = backend_cpu_seconds(engine, database)
    own_before = _own_cpu()
    listener = PublishListener(engine)
    listener.start()
    started = time.perf_counter()
    run_id, status = _run_job(engine, settings)
    seconds = time.perf_counter() - started
    publishes = [round(t - started, 3) for t in listener.stop()]
    own_cpu = _own_cpu() - own_before
    cpu_after = backend_cpu_seconds(engine, database)
    backend_cpu = (cpu_after - cpu_before
                   if cpu_after is not None and cpu_before is not None else None)
    with engine.connect() as conn:
        run = dict(conn.execute(text(
            "SELECT status, fetched, inserted, unchanged, rejected, raw_inserted, error "
            "FROM runs WHERE id = :id"), {"id": run_id}).mappings().one())
    engine.dispose()
    print(json.dumps({
        "seconds": seconds, "job_status": status, "run": run, "publishes": publishes,
        "worker_cpu_seconds": own_cpu, "backend_cpu_seconds": backend_cpu,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
