"""Engine (one per process, after any fork), sessions, unit of work, create-once, pool check."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import psycopg2
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import libpq_params

T = TypeVar("T")
log = logging.getLogger(__name__)

_engine: Engine | None = None
_engine_pid: int | None = None
_engine_url: str | None = None


def make_engine(url: str, **kwargs: object) -> Engine:
    """A new engine with our pool settings (pre-ping survives database restarts)."""
    options: dict[str, object] = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 5}
    options.update(kwargs)
    return create_engine(url, **options)


def get_engine(url: str | None = None) -> Engine:
    """The process's engine; a forked child gets a fresh one instead of the parent's pool."""
    global _engine, _engine_pid, _engine_url
    if url is None:
        from shared.config import get_settings

        url = get_settings().database_url
    if _engine is None or _engine_pid != os.getpid() or _engine_url != url:
        if _engine is not None and _engine_pid == os.getpid():
            _engine.dispose()
        _engine = make_engine(url)
        _engine_pid = os.getpid()
        _engine_url = url
    return _engine


def dispose_engine() -> None:
    """Drop the process's engine without touching connections inherited from a parent."""
    global _engine, _engine_pid
    if _engine is not None:
        # close=False: after fork the sockets belong to the parent; just forget them.
        _engine.dispose(close=_engine_pid == os.getpid())
    _engine = None
    _engine_pid = None


def session_factory(engine: Engine | None = None) -> sessionmaker[Session]:
    """A sessionmaker bound to `engine` (default: the process engine)."""
    return sessionmaker(bind=engine or get_engine(), expire_on_commit=False)


@contextmanager
def unit_of_work(engine: Engine | None = None) -> Iterator[Session]:
    """One session for one unit of work: commit on success, roll back on error, always close."""
    session = session_factory(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def create_once(session: Session, create: Callable[[], T],
                find: Callable[[], T | None]) -> tuple[T, bool]:
    """`create()`'s row, or `find()`'s when a concurrent request inserted the same key first.

    Returns (row, created). `create` adds and flushes inside a savepoint, so a unique key that
    another transaction committed first rolls back only what `create` added: those objects
    leave the session with it instead of failing every later flush. The caller looks for an
    existing row before calling, and commits.
    """
    try:
        with session.begin_nested():
            return create(), True
    except IntegrityError:
        winner = find()
        if winner is None:
            raise
        return winner, False


# Pool mode: whether a database URL keeps one server session per client connection.
#
# Whether a database URL keeps one server session per client connection (direct or session pool).
#
# The workers hold session-level advisory locks (one live execution per source or backfill,
# which the reaper also probes) on a connection across many transactions. Through PgBouncer in
# transaction (or statement) pooling mode, each transaction of that connection may run on another
# server session: the lock stays behind on a session that other clients then borrow, and two
# executions of one source can both think they hold it. So the worker checks its DATABASE_URL at
# start and refuses a pool that does not keep sessions (worker/factory.py).
#
# The check, with two client connections A and B:
#   1. A, in a transaction of its own: pg_backend_pid() -> p1; the transaction ends.
#   2. B opens a transaction and keeps it open: pg_backend_pid() -> pb.
#   3. A, in a new transaction: pg_backend_pid() -> p2.
# A keeps its session only if p2 == p1, and B must not be on A's session (pb != p1). Through a
# transaction pool, A's server session is free after step 1: PgBouncer hands the most recently
# released server to the next transaction (its default LIFO reuse), so B gets A's session in
# step 2; and while B holds a server, A's step 3 cannot run on it. `SHOW pool_mode` is not
# something a client connection can ask, and the admin console needs its own credentials: the
# backend pids answer from the ordinary connection the worker uses. With `server_round_robin = 1`
# (FIFO reuse) a transaction pool with exactly two idle servers can pass; docs/scaling.md says
# which URL each process needs in any case.

CONNECT_TIMEOUT_SECONDS = 10


class SessionPoolingRequired(RuntimeError):
    """The URL's connections do not keep their server session across transactions."""


@dataclass(frozen=True)
class PoolCheck:
    """The backend pids the check saw, and its verdict."""

    first: int
    other_client: int
    second: int

    @property
    def keeps_sessions(self) -> bool:
        """Whether one client connection stayed on one server session, apart from others."""
        return self.first == self.second and self.other_client != self.first


def _connect(url: str) -> Any:
    params: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS,
                              "application_name": "kasparro-pool-check", **libpq_params(url)}
    return psycopg2.connect(**params)


def _pid(conn: Any) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        row = cursor.fetchone()
    return int(row[0])


def check_pool(url: str) -> PoolCheck:
    """Run the check on `url` (raises psycopg2.Error when the database cannot be asked)."""
    first_conn = _connect(url)
    other_conn = None
    try:
        first_conn.autocommit = True  # every statement a transaction of its own
        first = _pid(first_conn)
        other_conn = _connect(url)
        other_conn.autocommit = False  # the first statement opens a transaction that stays
        other_client = _pid(other_conn)
        second = _pid(first_conn)
        return PoolCheck(first, other_client, second)
    finally:
        if other_conn is not None:
            other_conn.close()
        first_conn.close()


def require_session_pooling(url: str, who: str) -> None:
    """Raise SessionPoolingRequired when `url` does not keep sessions (what `who` needs).

    A database that cannot be reached is only logged: the process starts and retries its
    connections as it always does; the check is about a wrong pool, not an outage.
    """
    try:
        found = check_pool(url)
    except psycopg2.Error as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "pooling mode" in message:  # PgBouncer refusing a transaction: statement pooling
            raise SessionPoolingRequired(_refusal(who, message)) from None
        log.warning("%s: could not check that DATABASE_URL keeps sessions (%s); starting",
                    who, type(exc).__name__)
        return
    if not found.keeps_sessions:
        raise SessionPoolingRequired(_refusal(
            who, f"backend pid {found.first} then {found.second} for one client connection, "
                 f"{found.other_client} for another"))
    log.info("%s: DATABASE_URL keeps one server session per connection (pid %s)", who,
             found.first)


def _refusal(who: str, seen: str) -> str:
    return (f"{who} refuses to start: DATABASE_URL does not keep a server session per client "
            f"connection ({seen}). Its session advisory locks would be shared between "
            "clients, so two executions of one source could run at once. Point DATABASE_URL "
            "at PostgreSQL directly or at a PgBouncer pool with pool_mode = session "
            "(transaction pooling is for the API only; docs/scaling.md).")
