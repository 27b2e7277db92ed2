"""The `make run` path without local services: embedded PostgreSQL + Redis, migrations, gunicorn."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from scripts import stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait_for_health(url: str, api: stack.Child, seconds: float = 60) -> tuple[int, Any]:
    deadline = time.monotonic() + seconds
    while True:
        assert api.popen.poll() is None, f"gunicorn exited:\n{stack._tail(api.log or Path())}"
        try:
            status, body = _get_json(url)
        except (urllib.error.URLError, OSError, ValueError):
            status, body = 0, None
        if status == 200 or time.monotonic() > deadline:
            return status, body
        time.sleep(0.3)


def _check_ok(body: Any, name: str) -> bool:
    """Whether /health reports check `name` as ok (``{"checks": {name: {"ok": true}}}``)."""
    check = (body.get("checks") or {}).get(name, body.get(name))
    return bool(check.get("ok")) if isinstance(check, dict) else check in (True, "ok")


def test_embedded_stack_serves_health(tmp_path: Path) -> None:
    """Wheel-embedded servers, then `flask db upgrade`, then gunicorn answers /health with 200."""
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    # port=0: free ports, never the machine's 5432/6379 (or the dev stack's fixed ports).
    database_url, stop_postgres = stack.start_embedded_postgres(
        var_dir, port=0, database="kasparro_e2e"
    )
    redis_url = ""
    try:
        redis_url, stop_redis = stack.start_embedded_redis(var_dir, port=0)
        try:
            assert ":5432/" not in database_url and ":6379/" not in redis_url
            assert stack.ensure_database(database_url) is True
            assert stack.ensure_database(database_url) is False  # idempotent
            # A second start reuses the running servers and must not own their shutdown.
            again, stop_again = stack.start_embedded_postgres(
                var_dir, port=0, database="kasparro_e2e"
            )
            assert again == database_url and stop_again is stack._noop

            env = dict(os.environ)
            env.update(
                DATABASE_URL=database_url,
                REDIS_URL=redis_url,
                API_TOKEN=secrets.token_urlsafe(32),
                PYTHONUNBUFFERED="1",
            )
            migrate = subprocess.run(
                [sys.executable, "-m", "flask", "--app", "api", "db", "upgrade"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
            )
            assert migrate.returncode == 0, migrate.stdout + migrate.stderr
            with closing(psycopg2.connect(database_url.replace("+psycopg2", ""))) as conn:
                with conn.cursor() as cur:
                    cur.execute("SELECT version_num FROM alembic_version")
                    assert cur.fetchone() is not None

            port = stack.free_port()
            api = stack.spawn(
                "api",
                [sys.executable, "-m", "gunicorn", "api:create_app()",
                 "-b", f"127.0.0.1:{port}", "-w", "2", "--no-control-socket"],
                env, tmp_path / "api.log",
            )
            try:
                status, body = _wait_for_health(f"http://127.0.0.1:{port}/health", api)
            finally:
                stack.stop_children([api], timeout=20)
            assert status == 200, (body, stack._tail(tmp_path / "api.log"))
            assert _check_ok(body, "database"), body
            assert _check_ok(body, "broker"), body
            assert api.popen.returncode is not None
        finally:
            stop_redis()
    finally:
        stop_postgres()
    host_port = database_url.rsplit("@", 1)[1].split("/", 1)[0]
    assert not stack.port_answers("127.0.0.1", int(host_port.rsplit(":", 1)[1]))
    assert not stack.port_answers("127.0.0.1", int(redis_url.rsplit(":", 1)[1].split("/")[0]))
