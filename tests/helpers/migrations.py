"""Walking the migrations: `flask db` on a database of its own, made and dropped per test."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

from sqlalchemy import Connection, Engine, create_engine, make_url, text

from tests.conftest import ROOT, _admin_engine, _server_url
from tests.helpers.waiting import poll


def flask_db(url: str, *args: str) -> None:
    """`flask --app api db <args>` on the database at `url`, as `make migrate` runs it."""
    subprocess.run([sys.executable, "-m", "flask", "--app", "api", "db", *args], cwd=ROOT,
                   env=dict(os.environ, DATABASE_URL=url), check=True, capture_output=True)


@contextmanager
def scratch_database() -> Iterator[tuple[str, Engine]]:
    """A new empty database for walking migrations up and down: its URL and an engine.

    Dropped afterwards, whatever the test left connected.
    """
    admin = _admin_engine()
    name = f"kasparro_mig_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(_server_url()).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        yield url, engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def upgrade_with_a_late_write(url: str, engine: Engine, args: list[str], ready_sql: str,
                              late_sql: str, swapped: str,
                              check: Callable[[Connection], None] | None = None) -> str:
    """`flask db upgrade <args>` while an old worker writes: once `ready_sql` answers non-null
    and non-zero, `late_sql` runs in a transaction (then `check`, if given) that commits only
    when the migration's last step waits for `LOCK TABLE <swapped>`. The upgrade's output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "api", "db", "upgrade", *args],
        cwd=ROOT, env=dict(os.environ, DATABASE_URL=url), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def scalar(sql: str, **params: str) -> object:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    try:
        poll(lambda: scalar(ready_sql), bool, 120, "the migration's first step")
        with engine.connect() as writer:
            writer.execute(text(late_sql))
            if check is not None:
                check(writer)
            waiting = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                       "AND query LIKE :lock")
            poll(lambda: scalar(waiting, lock=f"LOCK TABLE {swapped} IN ACCESS EXCLUSIVE%"),
                 lambda n: n == 1, 240, "the last step waiting for the writer")
            writer.commit()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    return out
