"""The API's request engines: a socket check at checkout (not a round trip), read timeouts."""
from __future__ import annotations

import select
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError

from api.http.read_timeout import install as install_read_timeout
from shared.db import make_engine


def request_engine(url: str, **kwargs: object) -> Engine:
    """An engine for the requests' sessions (primary or replica): pooled connections checked
    by their socket at checkout; reads begin with SET LOCAL statement_timeout."""
    engine = make_engine(url, pool_pre_ping=False, **kwargs)
    install_socket_check(engine)
    install_read_timeout(engine)
    return engine


def install_socket_check(engine: Engine) -> None:
    """Poll each connection's socket at checkout instead of a pre-ping (`pool_pre_ping=False`)."""
    event.listen(engine, "checkout", _check_socket)


def _check_socket(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    # An idle pooled connection has nothing to read: the server speaks only when asked. A
    # restart, a crash or pg_terminate_backend leaves a FATAL message and EOF there, which
    # shows as readable, as on the data-version watch (api/db.py). The pre-ping's SELECT 1
    # was a round trip per request: ~12% of a worker's wall time on uncached GET /data under
    # load (docs/benchmarks.md). Raising DisconnectionError makes the pool drop the
    # connection and check out another (a fresh one if need be), as a failed pre-ping does.
    try:
        readable = bool(dbapi_connection.closed) or bool(
            select.select([dbapi_connection], [], [], 0)[0])
    except (OSError, ValueError):  # a closed descriptor
        readable = True
    if readable:
        raise DisconnectionError("the server closed the pooled connection (or sent unasked)")
