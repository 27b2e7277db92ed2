"""Request-scoped database session (a read replica's for reads), the data version per process."""
from __future__ import annotations

import logging
import os
import select
import threading
import time
from typing import Any

import psycopg2
from flask import Flask, current_app, g, has_request_context, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api.http.read_timeout import QUERY_CANCELED, READ_METHODS
from api.pool_check import request_engine, statement_engine
from api.replicas import REPLICA_CHECK_SECONDS, Replica, ReplicaSet
from shared.db import make_engine
from shared.queries.data import DATA_VERSION_SQL

log = logging.getLogger(__name__)

# Blueprints whose reads stay on the primary whatever the replicas: the job, backfill and run
# status a client polls right after its own POST (read-your-writes, without a session or
# cookie to carry: these tables are small and read by id), the probes and the scrape (they
# report on the primary and on each replica), and the status pages (cached under the
# primary's data version, so they must come from a database that has reached it).
PRIMARY_BLUEPRINTS = frozenset({"jobs", "backfills", "runs", "health", "metrics", "status"})


def init_db(app: Flask, database_url: str) -> None:
    """Create the app's engines and session factory; close the session after each request."""
    settings = app.config["SETTINGS"]
    # Reads (GET, HEAD) begin with SET LOCAL statement_timeout (api/http/read_timeout.py).
    engine = request_engine(database_url)
    app.extensions["db_engine"] = engine
    # Its autocommit twin, for reads that are one statement (GET /data's page).
    app.extensions["db_statement_engine"] = statement_engine(database_url)
    app.extensions["db_sessionmaker"] = sessionmaker(bind=engine, expire_on_commit=False)
    app.extensions["db_replicas"] = ReplicaSet(
        settings.database_read_urls, settings.replica_max_lag_seconds,
        app.config.get("REPLICA_CHECK_SECONDS", REPLICA_CHECK_SECONDS), primary=engine)
    # The data-version watch has its own connection: autocommit (a LISTEN takes effect at once,
    # a read needs no BEGIN/ROLLBACK) and no pre-ping (a failed poll or read tells a dead
    # connection, and the watch replaces it on the spot). Straight to the primary
    # (DATABASE_LISTEN_URL): LISTEN and PREPARE need a session of their own, which a
    # transaction pool does not keep, and replicas do not relay notifications.
    app.extensions["db_version_engine"] = make_engine(
        settings.database_listen_url or database_url, isolation_level="AUTOCOMMIT",
        pool_pre_ping=False, pool_size=1, max_overflow=1)
    app.extensions["db_version_watch"] = _VersionWatch()

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is None:
            return
        try:
            session.close()
        except SQLAlchemyError as exc:
            # The connection died after the answer was made (its server went away): the
            # answer stands, the pool drops the connection, and a replica is left for a while.
            replica: Replica | None = g.get("db_replica")
            if replica is not None:
                current_app.extensions["db_replicas"].failed(replica, exc)
            log.warning("closing the request's session failed: %s", type(exc).__name__)


def release_connections(app: Flask) -> None:
    """Close the app's database connections: its pools' idle ones, its replicas' and its
    version watch's. Each reopens on first use. For a process that builds many apps (the test
    suite): an app it drops would hold them until garbage collection."""
    app.extensions["db_version_watch"].close()
    app.extensions["db_engine"].dispose()
    app.extensions["db_statement_engine"].dispose()
    app.extensions["db_version_engine"].dispose()
    app.extensions["db_replicas"].dispose()


def get_session() -> Session:
    """The current request's session (created on first use), on a replica for most reads."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["db_sessionmaker"](bind=get_engine())
    session: Session = g.db_session
    return session


def get_engine() -> Engine:
    """The request's engine (for reads that manage their own connection and snapshot): a
    replica within the lag bound for a GET or HEAD outside PRIMARY_BLUEPRINTS, else the
    primary's. Chosen once per request."""
    if "db_request_engine" not in g:
        replica = _read_replica()
        g.db_replica = replica
        g.db_request_engine = replica.engine if replica is not None \
            else current_app.extensions["db_engine"]
    engine: Engine = g.db_request_engine
    return engine


def get_statement_engine() -> Engine:
    """The autocommit twin of the request's engine (same server, api.pool_check.statement_engine):
    for a read that is one statement, so one snapshot without a transaction around it."""
    get_engine()  # the request's choice of server, made once
    replica: Replica | None = g.get("db_replica")
    engine: Engine = replica.statement_engine if replica is not None \
        else current_app.extensions["db_statement_engine"]
    return engine


def read_on_replica() -> str | None:
    """The name of the replica this request reads (None: the primary)."""
    replica: Replica | None = g.get("db_replica")
    return None if replica is None else replica.name


def _read_replica() -> Replica | None:
    if not has_request_context() or request.method not in READ_METHODS \
            or request.blueprint in PRIMARY_BLUEPRINTS or g.get("db_primary_only"):
        return None
    replicas: ReplicaSet = current_app.extensions["db_replicas"]
    return replicas.choose() if replicas else None


# What a replica going away, refusing a connection or cancelling a read for a conflict with
# recovery raises: SQLAlchemy's wrappers, and psycopg2's own from a raw cursor (the statement
# timeout's SET LOCAL runs on one, api/http/read_timeout.py).
REPLICA_FAILURES = (OperationalError, InterfaceError, psycopg2.OperationalError,
                    psycopg2.InterfaceError)


def _again_on_primary(exc: BaseException) -> bool:
    """After a failed read on a replica: leave the replica, point the request at the primary."""
    replica: Replica | None = g.get("db_replica")
    orig = getattr(exc, "orig", None) or exc
    if replica is None or getattr(orig, "pgcode", None) == QUERY_CANCELED:
        return False  # a timeout is the query's cost, which the primary would pay too
    current_app.extensions["db_replicas"].failed(replica, exc)
    log.warning("read on replica %s failed (%s); answering from the primary", replica.name,
                type(orig).__name__)
    session = g.pop("db_session", None)
    if session is not None:
        try:
            session.close()
        except SQLAlchemyError:
            pass  # its connection is gone with the replica
    g.pop("db_request_engine", None)
    g.db_replica, g.db_primary_only = None, True
    return True


class ReplicaAwareFlask(Flask):
    """Flask whose dispatch runs a read again on the primary when its replica failed it."""

    def dispatch_request(self) -> ResponseReturnValue:
        """The view's answer; a replica's connection or query failure retried on the primary."""
        try:
            return super().dispatch_request()
        except REPLICA_FAILURES as exc:
            if not _again_on_primary(exc):
                raise
        return super().dispatch_request()


# The channel bump_data_version() notifies on every bump (migration 0007); payload: the version.
DATA_VERSION_CHANNEL = "data_version"
# However quiet the channel, each process reads the version itself at least this often: a
# bound on staleness should a notification ever go missing without the connection failing.
VERSION_RECHECK_SECONDS = 1.0


class _VersionWatch:
    """Per process: the committed data version, kept current by the bump notifications.

    One connection, kept checked out, LISTENs on the data_version channel. A request looks at
    its socket without waiting (select with timeout 0, ~1 us): a notification there is a
    publish that committed, and its payload is the new version. So a request costs no round
    trip, where reading the version by primary key cost one per GET /data (a quarter of the
    endpoint's throughput under load, see migration 0007). A publish is seen as soon as the
    server has sent its notification, which it does right after the commit; the version is
    also read outright on connecting and once per VERSION_RECHECK_SECONDS. A failed connection
    (server restart, terminated backend) shows as readable, fails its poll, and is replaced
    once on the spot, as a pre-ping would.
    """

    # Reads retried while notifications keep arriving during them (each arrival may be older
    # or newer than the value read; a read with none around it settles the question).
    SETTLE_READS = 3

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pid = 0
        self.connection: Any = None  # the pool's wrapper, kept checked out
        self.listener: Any = None  # the psycopg2 connection under it
        self.version: int | None = None
        self.read_at = 0.0

    def current(self, engine: Engine) -> int | None:
        """The data version as of the last notification this process has received."""
        errors = (engine.dialect.loaded_dbapi.OperationalError,
                  engine.dialect.loaded_dbapi.InterfaceError)
        with self._lock:
            for attempt in (1, 2):
                # After a fork the connection belongs to the parent: leave it alone.
                fresh = self.connection is None or self.pid != os.getpid()
                try:
                    if fresh:
                        self._connect(engine)
                    elif time.monotonic() - self.read_at >= VERSION_RECHECK_SECONDS:
                        self._read()
                    else:
                        self._drain()
                    return self.version
                except errors:
                    if self.connection is not None and self.pid == os.getpid():
                        self.connection.invalidate()
                    self.connection = self.listener = None
                    if fresh or attempt == 2:
                        raise
        return None  # pragma: no cover - the loop returns or raises

    def close(self) -> None:
        """Drop the connection (the next read connects afresh); a forked child leaves the
        parent's alone."""
        with self._lock:
            if self.connection is not None and self.pid == os.getpid():
                self.connection.invalidate()
            self.connection = self.listener = None

    def _connect(self, engine: Engine) -> None:
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            # LISTEN before the first read: no commit can fall between the two unseen.
            cursor.execute(f"LISTEN {DATA_VERSION_CHANNEL}")
            cursor.execute(f"PREPARE data_version_read AS {DATA_VERSION_SQL}")
        except BaseException:
            connection.close()
            raise
        self.connection, self.listener, self.pid = connection, connection.driver_connection, \
            os.getpid()
        self._read()

    def _read(self) -> None:
        listener = self.listener
        with listener.cursor() as cursor:
            for _ in range(self.SETTLE_READS):
                listener.notifies.clear()
                cursor.execute("EXECUTE data_version_read")
                row = cursor.fetchone()
                self.version = None if row is None else int(row[0])
                if not listener.notifies:
                    break
        if listener.notifies:  # still arriving: the last one sent is the newest commit
            self.version = int(listener.notifies[-1].payload)
            listener.notifies.clear()
        self.read_at = time.monotonic()

    def _drain(self) -> None:
        listener = self.listener
        if not select.select([listener], [], [], 0)[0]:
            return
        listener.poll()
        if listener.notifies:
            # In commit order: the last one is the version committed last.
            self.version = int(listener.notifies[-1].payload)
            listener.notifies.clear()


def current_data_version() -> int | None:
    """The committed data version, as this process's notifications have it (no round trip)."""
    watch: _VersionWatch = current_app.extensions["db_version_watch"]
    return watch.current(current_app.extensions["db_version_engine"])
