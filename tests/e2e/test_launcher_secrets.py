"""`scripts.stack run` with secrets in its environment: none in its output or under its var/."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from scripts import stack
from tests.conftest import _admin_engine, _server_url
from tests.helpers.serving import status_of, wait_while_alive
from tests.helpers.waiting import all_jobs_ended
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# Variables of the developer's own stack that must not reach the launcher under test.
_OWN = ("DATABASE_URL", "REDIS_URL", "BROKER_KEY_PREFIX", "API_TOKEN", "CSV_DIR", "ETL_SOURCES",
        "EMBEDDED", "COINGECKO_API_KEY", "COINPAPRIKA_API_KEY", "SLACK_WEBHOOK_URL",
        "ALERT_WEBHOOK_URL", "APPRISE_URLS")


def _secret(name: str) -> str:
    """A value that appears nowhere unless it leaked (hex: the same in any URL encoding)."""
    return f"{name}{secrets.token_hex(12)}"


@pytest.fixture
def role_database() -> Iterator[tuple[str, str, str]]:
    """(role, password, database): a PostgreSQL role with a password, owning a new database."""
    role, password = f"kse_{secrets.token_hex(4)}", _secret("dbpw")
    name = f"kasparro_secrets_{secrets.token_hex(4)}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(text(f'CREATE DATABASE "{name}" OWNER {role}'))
    try:
        yield role, password, name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that refuses clients without its password (requirepass)."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir, password=_secret("redispw"))
    server.start()
    yield server
    server.kill()


def _leaks(found_in: list[Path], values: dict[str, str]) -> list[str]:
    """Which secret (by name) is in which file: every file is read as bytes, binary ones too."""
    leaks = []
    for path in found_in:
        data = path.read_bytes()
        leaks += [f"{name} in {path}" for name, value in values.items()
                  if value.encode() in data]
    return leaks


def _files(var_dir: Path) -> list[Path]:
    return sorted(p for p in var_dir.rglob("*") if p.is_file())


def _make(target: str, stack_env: Path, env: dict[str, str], stdin: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    """`make <target>` on this venv, never reinstalling it (-o: its stamps count as current)."""
    venv = Path(sys.prefix)
    return subprocess.run(
        ["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/.installed-run",
         f"STACK_ENV={stack_env}", target], cwd=ROOT, env=env, input=stdin,
        capture_output=True, text=True, timeout=150)


def test_no_secret_in_the_launchers_output_or_var_dir(
    tmp_path: Path, role_database: tuple[str, str, str], redis_with_password: RedisServer,
) -> None:
    role, db_password, name = role_database
    server = make_url(_server_url())
    database_url = (f"postgresql://{role}:{db_password}@{server.host or '127.0.0.1'}:"
                    f"{server.port or 5432}/{name}")
    hook = _secret("hook")
    values = {
        "API_TOKEN": _secret("tok"),
        "COINGECKO_API_KEY": _secret("cgkey"),
        "COINPAPRIKA_API_KEY": _secret("cpkey"),
        "SLACK_WEBHOOK_URL": f"http://127.0.0.1:9/services/T0/B0/{hook}",
        "ALERT_WEBHOOK_URL": f"http://127.0.0.1:9/alerts/{_secret('alert')}",
        "APPRISE_URLS": f"json://127.0.0.1:9/{_secret('apprise')}",
    }
    leak_checked = {**values, "webhook path": hook, "database password": db_password,
                    "redis password": str(redis_with_password.password)}
    var_dir, data = tmp_path / "var", tmp_path / "data"
    shutil.copytree(ROOT / "data", data)
    port = stack.free_port()
    env = {k: v for k, v in os.environ.items() if k not in _OWN}
    env.update(values, DATABASE_URL=database_url, REDIS_URL=redis_with_password.url,
               BROKER_KEY_PREFIX=f"kls-{secrets.token_hex(4)}:", CSV_DIR=str(data),
               ETL_SOURCES="csv,coingecko,coinpaprika", REPLAY_UPSTREAM="1",
               API_PORT=str(port), PYTHONUNBUFFERED="1")
    log = tmp_path / "launcher.out"  # stdout and stderr, the children's echoed logs too
    stack_env = var_dir / "stack.env"
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "scripts.stack", "--var-dir", str(var_dir), "run"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    db = create_engine(database_url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        wait_while_alive(lambda: "Kasparro is running" in log.read_text(errors="replace"),
                         launcher, log, 180, "the banner")
        wait_while_alive(lambda: status_of(f"http://127.0.0.1:{port}/health", 5) == 200,
                         launcher, log, 60, "/health 200")
        # Beat's first job ends: both keys went to the replay upstream, the worker logged.
        wait_while_alive(lambda: all_jobs_ended(db), launcher, log, 120, "beat's first job")
        with db.connect() as conn:
            runs = dict(conn.execute(text("SELECT source, status FROM runs")).all())
        assert runs == {"csv": "succeeded", "coingecko": "succeeded",
                        "coinpaprika": "succeeded"}, runs
        assert not (var_dir / "api_token").exists()  # a token from the environment
        running_files = _files(var_dir)
        assert stack_env in running_files
        assert _leaks(running_files, leak_checked) == []

        # make's targets take the left-out secrets from the caller's environment.
        caller = {k: v for k, v in env.items() if k not in ("API_PORT", "REPLAY_UPSTREAM")}
        inspect = _make("inspect", stack_env, caller)
        assert inspect.returncode == 0 and "pong" in inspect.stdout, inspect.stderr
        shell = _make("shell", stack_env, caller, stdin='echo "token=$API_TOKEN"\n'
                      'echo "redis=$REDIS_URL"\necho "db=$DATABASE_URL"\nexit\n')
        assert shell.returncode == 0, shell.stdout + shell.stderr
        assert f"token={values['API_TOKEN']}" in shell.stdout
        assert f"redis={redis_with_password.url}" in shell.stdout
        assert f"db={database_url}" in shell.stdout
    finally:
        db.dispose()
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGTERM)
        launcher.wait(60)
    assert launcher.returncode == 0, stack._tail(log, 40)

    output = log.read_text(errors="replace")
    banner = output[output.index("Kasparro is running"):output.index("Press Ctrl-C")]
    assert "API_TOKEN from the environment, written nowhere" in banner
    assert 'Authorization: Bearer $API_TOKEN' in banner
    assert f"DATABASE_URL=postgresql+psycopg2://{role}@" in banner
    assert (f"REDIS_URL=redis://127.0.0.1:{redis_with_password.port}/0  (password not shown)"
            in banner)
    assert ("secrets COINGECKO_API_KEY, COINPAPRIKA_API_KEY, SLACK_WEBHOOK_URL, "
            "ALERT_WEBHOOK_URL, APPRISE_URLS set (values never shown)") in banner
    assert "stopping" in output  # the whole run is in the log, its shutdown too
    files = _files(var_dir)
    assert {p.name for p in files} >= {"api.log", "worker.log", "beat.log", "upstream.log"}
    assert _leaks([log, *files], leak_checked) == []
