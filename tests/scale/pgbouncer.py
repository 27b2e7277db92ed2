"""Debian's pgbouncer on a loopback port in front of one PostgreSQL database, for the scale tests.

Two pools on one PgBouncer: `<db>_tx` in transaction pooling mode (the API's) and `<db>_session`
in session pooling mode (what the workers may use). As root, pgbouncer (which refuses to run
as root) is started with `-u` as the given account.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy.engine import make_url

from scripts import embedded

CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def binary() -> str | None:
    """The pgbouncer executable, or None when the machine has none (.ci/run installs it)."""
    found = shutil.which("pgbouncer")
    return found or next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)


def account() -> pwd.struct_passwd | None:
    """Who runs pgbouncer: None (this user) unless root, which pgbouncer refuses."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return embedded._ensure_system_user(embedded.PG_SYSTEM_USER)


@dataclass
class PgBouncer:
    """A running pgbouncer: its port, pool URLs and admin console."""

    process: subprocess.Popen[bytes]
    port: int
    base: Path
    database: str
    username: str

    def url(self, mode: str) -> str:
        """The SQLAlchemy URL of the `transaction` or `session` pool."""
        alias = {"transaction": "tx", "session": "session"}[mode]
        return (f"postgresql+psycopg2://{self.username}@127.0.0.1:{self.port}/"
                f"{self.database}_{alias}")

    def show(self, what: str) -> list[dict[str, Any]]:
        """SHOW `what` on the admin console (POOLS, STATS, SERVERS, ...), as dicts."""
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.username,
                                dbname="pgbouncer", connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f"SHOW {what}")
                names = [column.name for column in cursor.description]
                return [dict(zip(names, row)) for row in cursor.fetchall()]
        finally:
            conn.close()

    def log_text(self) -> str:
        """What pgbouncer logged."""
        return (self.base / "pgbouncer.log").read_text(errors="replace")

    def stop(self) -> None:
        """Stop pgbouncer and remove its files."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # immediate shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.base, ignore_errors=True)


def start_pgbouncer(server_url: str, pool_size: int) -> PgBouncer:
    """pgbouncer with a transaction pool and a session pool of `server_url`'s database."""
    user = account()
    executable = binary()
    assert executable is not None, "no pgbouncer"
    server = make_url(server_url)
    base = Path(tempfile.mkdtemp(prefix="kasparro-pgbouncer-"))
    port = embedded.free_port()
    username = server.username or "postgres"
    target = (f"host={server.host or '127.0.0.1'} port={server.port or 5432} "
              f"dbname={server.database} user={username}"
              + (f" password={server.password}" if server.password else ""))
    (base / "userlist.txt").write_text(f'"{username}" ""\n')
    (base / "pgbouncer.ini").write_text(f"""[databases]
{server.database}_tx = {target} pool_mode=transaction pool_size={pool_size}
{server.database}_session = {target} pool_mode=session pool_size={pool_size + 20}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {base / "userlist.txt"}
admin_users = {username}
pool_mode = transaction
max_client_conn = 500
default_pool_size = {pool_size}
logfile = {base / "pgbouncer.log"}
pidfile = {base / "pgbouncer.pid"}
""")
    argv = [executable]
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
        for path in base.iterdir():
            os.chown(path, user.pw_uid, user.pw_gid)
        embedded._let_others_traverse(base.parent)
        argv += ["-u", user.pw_name]
    out = (base / "stdout.log").open("ab")
    process = subprocess.Popen([*argv, str(base / "pgbouncer.ini")], stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    bouncer = PgBouncer(process, port, base, str(server.database), username)
    deadline = time.monotonic() + 20
    while not embedded.port_answers("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            text = (base / "stdout.log").read_text(errors="replace")
            bouncer.stop()
            raise RuntimeError(f"pgbouncer did not start: {text[-2000:]}")
        time.sleep(0.1)
    return bouncer
