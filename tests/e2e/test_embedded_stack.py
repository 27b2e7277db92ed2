"""The `make run` path: embedded PostgreSQL + Redis, migrations, gunicorn; var/stack.env."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator

import psycopg2
import pytest
from sqlalchemy import create_engine as _create_engine

from scripts import stack
from tests.helpers.serving import status_of, wait_while_alive
from tests.helpers.waiting import all_jobs_ended

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _check_ok(body: Any, name: str) -> bool:
    """Whether /health reports check `name` as ok (``{"checks": {name: {"ok": true}}}``)."""
    check = (body.get("checks") or {}).get(name, body.get(name))
    return bool(check.get("ok")) if isinstance(check, dict) else check in (True, "ok")


@pytest.fixture
def pg_var_dir() -> Iterator[Path]:
    """A var dir outside pytest's basetemp.

    The embedded PostgreSQL runs as another account, which needs o+x on every parent; pytest
    sessions started meanwhile (other checkouts on this machine) reset /tmp/pytest-of-<user> to
    0700, which made initdb fail with 'Permission denied' half-way.
    """
    path = Path(tempfile.mkdtemp(prefix="kasparro-e2e-"))
    try:
        yield path / "var"
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_embedded_stack_serves_health(tmp_path: Path, pg_var_dir: Path) -> None:
    """Wheel-embedded servers, then `flask db upgrade`, then gunicorn answers /health with 200."""
    var_dir = pg_var_dir
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
                url = f"http://127.0.0.1:{port}/health"
                wait_while_alive(lambda: status_of(url) == 200, api.popen, tmp_path / "api.log",
                                 60, "gunicorn's /health")
                status, body = _get_json(url)
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


def _make(target: str, stack_env: Path, *args: str, stdin: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    """`make <target>` on this venv, never reinstalling it (-o: its stamps count as current)."""
    venv = Path(sys.prefix)
    return subprocess.run(
        ["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/.installed-run",
         f"STACK_ENV={stack_env}", target, *args],
        cwd=ROOT, env={k: v for k, v in os.environ.items() if k not in _STACK_KEYS},
        input=stdin, capture_output=True, text=True, timeout=150,
    )


_STACK_KEYS = ("DATABASE_URL", "REDIS_URL", "BROKER_KEY_PREFIX", "API_TOKEN", "CSV_DIR",
               "ETL_SOURCES")


def test_run_writes_stack_env_that_make_targets_use(tmp_path: Path) -> None:
    """`scripts.stack run` writes var/stack.env (600, no token); shell/etl/inspect use it.

    The banner names the generated token's file, never the token (tests/e2e/
    test_launcher_secrets.py: given secrets).
    """
    from scripts.stackenv import read_stack_env
    from shared.config import normalize_database_url
    from sqlalchemy import text

    from tests.conftest import _admin_engine, _redis_url, _server_url

    var_dir, data = tmp_path / "var", tmp_path / "data"
    shutil.copytree(ROOT / "data", data)
    name = f"kasparro_stackenv_{secrets.token_hex(4)}"
    raw_url = "postgres://" + _server_url().split("://", 1)[1].rsplit("/", 1)[0] + "/" + name
    prefix = f"kse-{secrets.token_hex(4)}:"
    port = stack.free_port()
    env = {k: v for k, v in os.environ.items() if k not in _STACK_KEYS + ("EMBEDDED",)}
    env.update(DATABASE_URL=raw_url, REDIS_URL=_redis_url(), BROKER_KEY_PREFIX=prefix,
               CSV_DIR=str(data), ETL_SOURCES="csv", API_PORT=str(port), PYTHONUNBUFFERED="1")
    log = tmp_path / "launcher.log"
    stack_env = var_dir / "stack.env"
    admin = _admin_engine()
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "scripts.stack", "--var-dir", str(var_dir), "run",
             "--no-tail"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_while_alive(stack_env.exists, launcher, log, 120, "var/stack.env")
        wait_while_alive(lambda: status_of(f"http://127.0.0.1:{port}/health/live") == 200,
                         launcher, log, 60, "the API")
        assert stack_env.stat().st_mode & 0o777 == 0o600
        values = read_stack_env(stack_env)
        token = (var_dir / "api_token").read_text().strip()
        assert token and token not in stack_env.read_text()
        assert values["DATABASE_URL"] == normalize_database_url(raw_url)
        assert values["REDIS_URL"] == env["REDIS_URL"]
        assert values["BROKER_KEY_PREFIX"] == prefix
        assert values["CSV_DIR"] == str(data.resolve())
        assert values["API_URL"] == f"http://127.0.0.1:{port}"
        assert "API_TOKEN" not in values
        assert "STACK_SECRETS_FROM_ENV" not in values  # a generated token, no password

        shell = _make("shell", stack_env, stdin='echo "db=$DATABASE_URL"\n'
                      'echo "token=$API_TOKEN"\nflask --app api etl --help >/dev/null && '
                      'echo flask-ok\nexit\n')
        assert shell.returncode == 0, shell.stdout + shell.stderr
        assert f"db={values['DATABASE_URL']}" in shell.stdout
        assert f"token={token}" in shell.stdout  # exported from var/api_token, not stack.env
        assert "flask-ok" in shell.stdout

        inspect = _make("inspect", stack_env)
        assert inspect.returncode == 0, inspect.stdout + inspect.stderr
        assert "pong" in inspect.stdout

        flower_port = stack.free_port()
        venv = Path(sys.prefix)
        flower = subprocess.Popen(
            ["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/.installed-run",
             "-o", f"{venv}/.installed-flower", f"STACK_ENV={stack_env}",
             f"FLOWER_PORT={flower_port}", "flower"],
            cwd=ROOT, env={k: v for k, v in os.environ.items() if k not in _STACK_KEYS},
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "flower.log", "wb"),
            start_new_session=True)
        try:
            def dashboard() -> str:
                if not stack.port_answers("127.0.0.1", flower_port):
                    return ""
                with urllib.request.urlopen(f"http://127.0.0.1:{flower_port}/workers",
                                            timeout=5) as response:
                    return str(response.read().decode())

            # The dashboard lists the stack's worker once it has heard from it.
            wait_while_alive(lambda: "celery@" in dashboard(), launcher, tmp_path / "flower.log",
                             60, "flower")
        finally:
            os.killpg(flower.pid, signal.SIGTERM)
            flower.wait(30)

        # Beat queues a job at start; let it end so ours does not find the CSV source busy.
        db = _create_engine(values["DATABASE_URL"])
        try:
            wait_while_alive(lambda: all_jobs_ended(db), launcher, log, 90, "beat's first job")
            etl = _make("etl", stack_env, "ARGS=enqueue --wait --timeout 60 --source csv")
            assert etl.returncode == 0, etl.stdout + etl.stderr
            first = etl.stdout.splitlines()[0]
            assert first.startswith("job ") and "(cli): run " in first, etl.stdout
            assert "succeeded" in etl.stdout.splitlines()[1]
            with db.connect() as conn:
                assert conn.execute(text(
                    "SELECT count(*) FROM jobs WHERE trigger = 'cli' AND status = 'succeeded'"
                )).scalar_one() == 1
        finally:
            db.dispose()
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGTERM)
        launcher.wait(60)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    assert launcher.returncode == 0, stack._tail(log, 40)
    # The banner says where the generated token is, never the token itself.
    output = log.read_text()
    assert f"token   in {var_dir / 'api_token'} (mode 600), never printed" in output
    assert token not in output
    assert not stack_env.exists()  # the stack it described is gone
    gone = _make("etl", stack_env, "ARGS=reap")
    assert gone.returncode != 0 and "start the stack first" in gone.stderr
