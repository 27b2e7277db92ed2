"""What the bench modules share: paths, the results row, progress output, the bench database,
CSV folders, the bare COPY baseline and process stops (so `bench.__main__` and the case
modules need not import each other)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.cpu import backend_cpu_seconds
from scripts.stack import ROOT, VAR_DIR

BENCH_DIR = VAR_DIR / "bench"
RESULTS = VAR_DIR / "bench-results.md"


@dataclass
class Row:
    """One line of the results table."""

    case: str
    measured: str
    baseline: str
    ratio: float | None
    goal: str
    met: bool | None

    def cells(self) -> list[str]:
        """The row as table cells."""
        ratio = "" if self.ratio is None else f"{self.ratio:.3g}"
        met = {True: "yes", False: "NO", None: "n/a"}[self.met]
        return [self.case, self.measured, self.baseline, ratio, self.goal, met]


def say(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class BenchDatabase:
    """A database of our own on the server, migrated, dropped by `drop()`."""

    def __init__(self, server_url: str) -> None:
        self.name = f"kasparro_bench_{uuid.uuid4().hex[:8]}"
        base = make_url(server_url)
        self.admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.url = base.set(database=self.name).render_as_string(hide_password=False)
        self.engine = create_engine(self.url, pool_pre_ping=True)

    def migrate(self, env: dict[str, str], root: Path = ROOT) -> None:
        """flask --app api db upgrade, as make run does, with the code and migrations in `root`.

        `env` must put `root` on PYTHONPATH when it is another tree (bench.stacks).
        """
        done = subprocess.run([sys.executable, "-m", "flask", "--app", "api", "db", "upgrade"],
                              cwd=root, env={**env, "DATABASE_URL": self.url},
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"migrations in {root} failed:\n{done.stderr[-2000:]}")

    def truncate_all(self) -> None:
        """Empty every table but alembic_version."""
        with self.engine.begin() as conn:
            tables = conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'alembic_version'")).scalars().all()
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))

    def checkpoint(self) -> None:
        """Flush dirty buffers so one measurement does not pay for the previous one's."""
        with self.admin.connect() as conn:
            conn.execute(text("CHECKPOINT"))

    def drop(self) -> None:
        """Drop the database."""
        self.engine.dispose()
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def only(directory: Path, *files: Path) -> Path:
    """A folder holding links to exactly these files (the CSV source reads a folder).

    Hard links: the CSV source does not follow symbolic ones, and an append to the file
    shows through a hard link (one inode).
    """
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for file in files:
        os.link(file.resolve(), directory / file.name)
    return directory


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started, then SIGKILL if needed."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def copy_baseline(db: BenchDatabase, path: Path) -> tuple[float, float | None]:
    """(seconds, backend CPU seconds) of a bare COPY of the file into one logged table.

    The table has the file's columns and a primary key like the quotes' (coin, time).
    """
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(
            "CREATE TABLE bench_copy (sno bigint, name text, symbol text, "
            "observed_at timestamptz, high numeric, low numeric, open numeric, "
            "close numeric, volume numeric, marketcap numeric, "
            "PRIMARY KEY (symbol, observed_at))")
        raw.commit()
        db.checkpoint()
        cpu_before = backend_cpu_seconds(db.engine, db.name)
        started = time.perf_counter()
        with path.open("rb") as handle:
            cur.copy_expert("COPY bench_copy FROM STDIN WITH (FORMAT csv, HEADER true)",
                            handle, 1 << 20)
        raw.commit()
        seconds = time.perf_counter() - started
        cpu_after = backend_cpu_seconds(db.engine, db.name)
        cur.execute("DROP TABLE bench_copy")
        raw.commit()
        cpu = cpu_after - cpu_before if cpu_after is not None and cpu_before is not None else None
        return seconds, cpu
    finally:
        raw.close()
