"""Read replicas of the API's GET requests: lag-checked per process, left alone while they fail.

Each process keeps the state of every replica in DATABASE_READ_URLS. A replica's replay lag is
read at most once per REPLICA_CHECK_SECONDS, by the request that finds it due (a query or two,
see LAG_SQL; the other requests meanwhile use the state as it is). A read goes to a replica
whose lag, as last read plus the time since (lag grows at most one second per second), is
within REPLICA_MAX_LAG_SECONDS; to the primary when none is. A replica that cannot be reached,
is not in recovery, or fails a read is left until its backoff ends (1 s, doubling to 30 s),
and the read that failed is run again on the primary (api.db.ReplicaAwareFlask).
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from api.http.read_timeout import TIMEOUT_OPTION
from api.pool_check import request_engine, statement_engine

log = logging.getLogger(__name__)

# A replica's lag is read at most this often per process (app.config may lower it).
REPLICA_CHECK_SECONDS = 1.0
# A failed replica is tried again after this long, doubling per failure up to the maximum.
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
# A replica that does not accept a connection within this long counts as down (unless its
# URL sets connect_timeout itself); the lag query has its own statement timeout.
CONNECT_TIMEOUT_SECONDS = 2
CHECK_TIMEOUT_MS = 2000
# Shown in the replica's pg_stat_activity (unless the URL names one).
APPLICATION_NAME = "kasparro-api-read"

# The replay lag in seconds, two upper bounds of it. First the age of the last commit the
# replica replayed (the primary's commit time against the replica's clock: keep them in sync).
# After a quiet spell on the primary that age grows with nothing left to replay, so past the
# bound the primary's flushed WAL position is sampled, and the replica's replay position is
# compared with the samples this process took: having replayed what the primary had at
# moment t, it lags by at most now - t (0 for a sample taken just now). The previous samples
# keep a replica of a primary that writes a little all the time (autovacuum, hint bits) from
# looking behind by its last commit's age. GitLab's database load balancing checks the same
# two ways.
LAG_SQL = """
SELECT pg_is_in_recovery(),
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
"""
PRIMARY_POSITION_SQL = "SELECT pg_current_wal_flush_lsn()::text"
REPLAYED_SQL = "SELECT pg_last_wal_replay_lsn()::text"
# Primary positions kept per process (one per check past the bound, at most).
POSITIONS_KEPT = 64

OK, LAGGING, DOWN, NOT_A_REPLICA, UNCHECKED = "ok", "lagging", "down", "not_a_replica", "unchecked"


def lsn_value(lsn: str) -> int:
    """A pg_lsn's text (`16/B374D848`) as a number that orders as the positions do."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


class PrimaryPositions:
    """The primary's flushed WAL position at moments this process sampled it (newest last)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, int]] = deque(maxlen=POSITIONS_KEPT)

    def add(self, at: float, position: int) -> None:
        """Remember that the primary had flushed up to `position` at `at` (monotonic)."""
        with self._lock:
            self._samples.append((at, position))

    def reached_at(self, replayed: int) -> float | None:
        """The latest sampled moment whose position a replica that `replayed` has reached."""
        with self._lock:
            return next((at for at, position in reversed(self._samples)
                         if position <= replayed), None)


def replica_name(url: str) -> str:
    """`host:port/database` of a PostgreSQL URL: what /health and /metrics call a replica (no
    user, no password)."""
    parsed = make_url(url)
    host = parsed.host or str(parsed.query.get("host") or "local")
    return f"{host}:{parsed.port or 5432}/{parsed.database or ''}"


@dataclass
class Replica:
    """One read replica: its engines and what this process last learnt about it."""

    name: str
    engine: Engine
    statement_engine: Engine  # autocommit, for reads that are one statement
    state: str = UNCHECKED
    lag: float | None = None  # seconds, as last read
    checked_at: float | None = None  # time.monotonic() of the last check
    error: str | None = None
    failures: int = 0  # in a row
    retry_at: float = 0.0  # no read and no check before this (monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def lag_now(self, now: float) -> float | None:
        """The lag as last read, aged by the time since (an upper bound of the lag now)."""
        if self.lag is None or self.checked_at is None:
            return None
        return self.lag + max(0.0, now - self.checked_at)

    def usable(self, now: float, max_lag: float) -> bool:
        """Whether a read may go here now."""
        lag = self.lag_now(now)
        return self.state == OK and now >= self.retry_at and lag is not None and lag <= max_lag


class ReplicaSet:
    """The replicas of one API process (possibly none), and the choice of one per read."""

    def __init__(self, urls: Sequence[str], max_lag: float,
                 check_seconds: float = REPLICA_CHECK_SECONDS, primary: Engine | None = None
                 ) -> None:
        self.max_lag, self.check_seconds, self.primary = max_lag, check_seconds, primary
        self.positions = PrimaryPositions()
        self._state_lock = threading.Lock()
        self.replicas = [Replica(replica_name(url), *_replica_engines(url)) for url in urls]

    def __bool__(self) -> bool:
        return bool(self.replicas)

    def choose(self) -> Replica | None:
        """A replica within the lag bound for one read (checking those due), or None."""
        now = time.monotonic()
        for replica in self.replicas:
            self._check_if_due(replica, now)
        now = time.monotonic()
        usable = [r for r in self.replicas if r.usable(now, self.max_lag)]
        return random.choice(usable) if usable else None

    def refresh(self) -> None:
        """Check every replica that is due (what /health and /metrics call before reporting)."""
        now = time.monotonic()
        for replica in self.replicas:
            self._check_if_due(replica, now)

    def failed(self, replica: Replica, exc: BaseException) -> None:
        """A read on `replica` failed: leave it for its backoff and drop its connections (the
        other reads that were on it when it went do not lengthen the backoff)."""
        self._down(replica, exc, time.monotonic(), by_check=False)

    def report(self) -> list[dict[str, Any]]:
        """Each replica's state for /health: name, in use, state, lag (the upper bound reads go
        by: as last read plus the time since), age of the check."""
        now = time.monotonic()
        rows = []
        for replica in self.replicas:
            lag, in_use = replica.lag_now(now), replica.usable(now, self.max_lag)
            rows.append({
                "name": replica.name,
                "in_use": in_use,
                # Aged past the bound since its check: lagging until the next check says.
                "state": LAGGING if replica.state == OK and not in_use else replica.state,
                "lag_seconds": None if lag is None else round(lag, 3),
                "checked_seconds_ago": None if replica.checked_at is None
                else round(now - replica.checked_at, 3),
                "error": replica.error,
            })
        return rows

    def health_check(self) -> dict[str, Any]:
        """GET /health's replicas check: each one's state, ok when every one is in use."""
        self.refresh()
        rows = self.report()
        idle = [row["name"] for row in rows if not row["in_use"]]
        result: dict[str, Any] = {"ok": not idle, "max_lag_seconds": self.max_lag,
                                  "replicas": rows}
        if idle:
            result["error"] = f"{len(idle)} of {len(rows)} replicas not in use: reads go to " \
                              "the others or the primary"
        return result

    def collect(self) -> Iterator[Metric]:
        """GET /metrics' kasparro_replica_lag_seconds and kasparro_replica_in_use, per replica
        (a prometheus_client collector)."""
        lag = GaugeMetricFamily("kasparro_replica_lag_seconds",
                                "Replay lag of each read replica as this process last read it",
                                labels=["replica"])
        in_use = GaugeMetricFamily("kasparro_replica_in_use",
                                   "1 when this process sends reads to the replica",
                                   labels=["replica"])
        self.refresh()
        for row in self.report():
            if row["lag_seconds"] is not None:
                lag.add_metric([row["name"]], row["lag_seconds"])
            in_use.add_metric([row["name"]], 1.0 if row["in_use"] else 0.0)
        yield lag
        yield in_use

    def dispose(self) -> None:
        """Close every replica's pooled connections."""
        for replica in self.replicas:
            replica.engine.dispose()
            replica.statement_engine.dispose()

    def _check_if_due(self, replica: Replica, now: float) -> None:
        if now < replica.retry_at:
            return
        if replica.checked_at is not None and now - replica.checked_at < self.check_seconds:
            return
        # One request checks; the others go on with the state as it is.
        if not replica.lock.acquire(blocking=False):
            return
        try:
            if replica.checked_at is None or \
                    time.monotonic() - replica.checked_at >= self.check_seconds:
                self._check(replica)
        finally:
            replica.lock.release()

    def _check(self, replica: Replica) -> None:
        try:
            engine = replica.engine.execution_options(**{TIMEOUT_OPTION: CHECK_TIMEOUT_MS})
            with engine.connect() as conn:
                in_recovery, lag = conn.execute(text(LAG_SQL)).one()
                if in_recovery and (lag is None or lag > self.max_lag):
                    self._sample_primary()  # before the replica's position is read
                    replayed = conn.exec_driver_sql(REPLAYED_SQL).scalar()
                    at = None if replayed is None \
                        else self.positions.reached_at(lsn_value(str(replayed)))
                    if at is not None:
                        within = max(0.0, time.monotonic() - at)
                        lag = within if lag is None else min(float(lag), within)
                conn.rollback()
        except SQLAlchemyError as exc:
            self._down(replica, exc, time.monotonic(), by_check=True)
            return
        lag = None if lag is None else float(lag)
        if not in_recovery:
            # A promoted (or misnamed) server is no replica of this primary: never read it.
            state, error = NOT_A_REPLICA, "not in recovery"
        elif lag is None or lag > self.max_lag:
            state, error = LAGGING, None
        else:
            state, error = OK, None
        with self._state_lock:
            before = replica.state
            replica.checked_at, replica.failures, replica.retry_at = time.monotonic(), 0, 0.0
            replica.lag, replica.state, replica.error = lag, state, error
        if state != before:
            log.info("replica %s: %s (lag %s s)", replica.name, state, lag)

    def _sample_primary(self) -> None:
        """Add the primary's flushed WAL position now to the samples (none if it fails)."""
        if self.primary is None:
            return
        at = time.monotonic()
        try:
            with self.primary.connect() as conn:
                position = conn.exec_driver_sql(PRIMARY_POSITION_SQL).scalar()
                conn.rollback()
        except SQLAlchemyError:
            return
        if position is not None:
            self.positions.add(at, lsn_value(str(position)))

    def _down(self, replica: Replica, exc: BaseException, now: float, by_check: bool) -> None:
        with self._state_lock:
            if not by_check and replica.state == DOWN and now < replica.retry_at:
                return  # already left, by another read that failed on it at the same time
            replica.failures += 1
            backoff = min(BACKOFF_MAX_SECONDS,
                          BACKOFF_FIRST_SECONDS * 2 ** (replica.failures - 1))
            replica.state, replica.retry_at, replica.checked_at = DOWN, now + backoff, now
            replica.error = _error_name(exc)
        log.warning("replica %s left for %.0f s: %s", replica.name, backoff, replica.error)
        # Its pooled connections are likely dead too: the next check connects afresh.
        replica.engine.dispose()
        replica.statement_engine.dispose()


def _error_name(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return type(orig if orig is not None else exc).__name__


def _replica_engines(url: str) -> tuple[Engine, Engine]:
    """The request engine and its autocommit twin on one replica: GET reads' statement timeout,
    a short connect timeout."""
    query = make_url(url).query
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    if "application_name" not in query:
        connect_args["application_name"] = APPLICATION_NAME
    return (request_engine(url, connect_args=connect_args),
            statement_engine(url, connect_args=connect_args))
