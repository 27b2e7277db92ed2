"""Statement timeouts on the API's reads: SET LOCAL per transaction, 503 and a count when one fires.

Every transaction the API engine begins while serving a GET or HEAD starts with
`SET LOCAL statement_timeout` (API_STATEMENT_TIMEOUT_MS; exports API_EXPORT_STATEMENT_TIMEOUT_MS).
SET LOCAL, not a session-level SET or a startup option: the limit ends with the transaction, so
it never outlives the request on a pooled connection, and it works through PgBouncer in
transaction pooling mode, which hands the next transaction of the same client connection to
any server connection. Writes (POST /jobs, /backfills) and the CLI run without it.
"""
from __future__ import annotations

import logging
from typing import Any, cast

import redis
from flask import current_app, g, has_request_context, request
from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError

from shared import redis_client

log = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD"})
# A connection's own limit in milliseconds (the exports' longer one), as an execution option.
TIMEOUT_OPTION = "statement_timeout_ms"
# /health and /metrics get at least this long, whatever API_STATEMENT_TIMEOUT_MS says: a limit
# tuned for pages must not make a probe call the database down. They stay bounded, and leave
# out only what timed out (a failed check, a missing metric family).
PROBE_MIN_TIMEOUT_MS = 2000
# A timed-out read is answered 503 with this Retry-After: the lock or load that slowed it
# has a chance to pass, and clients do not hammer the database with the same read at once.
RETRY_AFTER_SECONDS = 5
# SQLSTATE query_canceled: what PostgreSQL raises when statement_timeout fires.
QUERY_CANCELED = "57014"
# Redis hash of timeouts per route, shared by every API process and replica (as the quotas
# are), so /metrics reports the same figures whichever process answers the scrape.
COUNTS_KEY = "kasparro:api_statement_timeouts"


# A connection with this execution option set sends its SET LOCAL in front of the transaction's
# first statement (one query string, one round trip) instead of on its own. Only for code whose
# first statement goes through SQLAlchemy (a raw DBAPI cursor would run before the limit):
# GET /data's page (shared.queries.data_read.read_current_quotes). Under load each round trip waits
# its turn for a core: ~8% of an uncached GET /data's time in a worker (docs/benchmarks.md).
INLINE_OPTION = "statement_timeout_inline"
_PENDING = "statement_timeout_pending"


def install(engine: Engine) -> None:
    """Start each transaction of `engine` with the statement timeout in force for it."""
    event.listen(engine, "begin", _on_begin)
    event.listen(engine, "before_cursor_execute", _prefix_pending, retval=True)


def _prefix_pending(conn: Connection, cursor: Any, statement: str, parameters: Any,
                    context: Any, executemany: bool) -> tuple[str, Any]:
    milliseconds = conn.info.pop(_PENDING, None)
    if milliseconds is None:
        return statement, parameters
    if executemany or getattr(cursor, "name", None):
        # A named (server-side) cursor wraps the text in DECLARE: the SET goes on its own.
        _set_local(conn, milliseconds)
        return statement, parameters
    # No '%' in the prefix: psycopg2's parameter interpolation leaves it as it is. The
    # statement's result is the query string's last one, PostgreSQL (13+) times each
    # statement of a query string on its own, with the value in force when it starts.
    return f"SET LOCAL statement_timeout = {int(milliseconds)}; {statement}", parameters


def _on_begin(conn: Connection) -> None:
    conn.info.pop(_PENDING, None)  # one left by a transaction that ran no statement
    milliseconds = _timeout_for(conn)
    if not milliseconds:  # None or 0: no limit
        return
    if conn.get_execution_options().get(INLINE_OPTION):
        conn.info[_PENDING] = int(milliseconds)
        return
    _set_local(conn, milliseconds)


def _set_local(conn: Connection, milliseconds: int) -> None:
    # On the DBAPI connection: psycopg2 sends BEGIN (with the connection's isolation level)
    # first, and no SQLAlchemy event or autobegin runs again from inside this one.
    statement = f"SET LOCAL statement_timeout = {int(milliseconds)}"
    cursor = conn.connection.cursor()
    try:
        cursor.execute(statement)
    except conn.dialect.loaded_dbapi.Error as exc:
        # Raised as SQLAlchemy raises a statement's error (a DBAPIError: OperationalError for a
        # server gone), so the callers' `except SQLAlchemyError` (the replicas' check, the
        # fallback to the primary) handle a connection that died at its first statement.
        raise DBAPIError.instance(statement, None, exc, conn.dialect.loaded_dbapi.Error,
                                  dialect=conn.dialect) from exc
    finally:
        cursor.close()


def _timeout_for(conn: Connection) -> int | None:
    own = conn.get_execution_options().get(TIMEOUT_OPTION)
    if own is not None:
        return int(own)
    if not has_request_context() or request.method not in READ_METHODS:
        return None
    chosen = g.get("statement_timeout_ms")
    if chosen is not None:
        return int(chosen)
    return int(current_app.config["SETTINGS"].api_statement_timeout_ms)


def export_engine(engine: Engine) -> Engine:
    """`engine` whose connections read under API_EXPORT_STATEMENT_TIMEOUT_MS (same pool)."""
    milliseconds = current_app.config["SETTINGS"].api_export_statement_timeout_ms
    return engine.execution_options(**{TIMEOUT_OPTION: milliseconds})


def use_probe_timeout() -> None:
    """This request's reads run under the probes' limit (see PROBE_MIN_TIMEOUT_MS)."""
    reads = int(current_app.config["SETTINGS"].api_statement_timeout_ms)
    g.statement_timeout_ms = max(reads, PROBE_MIN_TIMEOUT_MS) if reads else 0


def is_statement_timeout(exc: BaseException) -> bool:
    """True for a database error that is PostgreSQL cancelling the statement."""
    return getattr(getattr(exc, "orig", None), "pgcode", None) == QUERY_CANCELED


def _client() -> redis.Redis:
    return redis_client.client(current_app.config["SETTINGS"], socket_timeout=0.5,
                               socket_connect_timeout=0.5)


def _key() -> str:
    return str(current_app.config["SETTINGS"].broker_key_prefix) + COUNTS_KEY


def count_timeout() -> None:
    """Add one to the current route's timeout count; a Redis failure only loses the count."""
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    log.warning("statement timeout on %s %s", request.method, route)
    client = _client()
    try:
        client.hincrby(_key(), route, 1)
    except redis.RedisError:
        log.warning("statement timeout not counted: Redis did not answer")
    finally:
        client.close()


def timeout_counts() -> dict[str, int]:
    """Timeouts per route since the counts began (raises redis.RedisError when it is down)."""
    client = _client()
    try:
        # redis-py types its sync and asyncio clients alike; this one is sync.
        raw = cast(dict[bytes, bytes], client.hgetall(_key()))
    finally:
        client.close()
    return {key.decode(): int(value) for key, value in raw.items()}
