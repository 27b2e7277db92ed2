"""Engine (one per process, made lazily after any fork), sessions, unit of work, create-once."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")

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
