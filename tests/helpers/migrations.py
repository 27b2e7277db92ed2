"""Walking the migrations: `flask db` on a database of its own, made and dropped per test."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import Engine, create_engine, make_url, text

from tests.conftest import ROOT, _admin_engine, _server_url


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
