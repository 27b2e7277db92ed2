"""The API's engines per server (primary, replicas): pre-pinged request pools, autocommit twins.

Both kinds start their reads under the API's statement timeout (api/http/read_timeout.py).
"""
from __future__ import annotations

from sqlalchemy import Engine

from api.http.read_timeout import install as install_read_timeout
from shared.db import make_engine


def request_engine(url: str, **kwargs: object) -> Engine:
    """An engine for the requests' sessions: reads begin with SET LOCAL statement_timeout.

    Its pool pre-pings a connection at checkout (make_engine's default), a round trip per
    request. A look at the idle socket instead was measured faster but raced a backend that
    was ending: the request's first statement then failed (docs/benchmarks.md).
    """
    engine = make_engine(url, **kwargs)
    install_read_timeout(engine)
    return engine


def statement_engine(url: str, **kwargs: object) -> Engine:
    """An autocommit engine for reads that are one statement (GET /data's page), no pre-ping.

    Its connections stay in autocommit: no BEGIN, COMMIT or isolation switch per request, and
    the read's SET LOCAL statement_timeout goes in front of the statement in one query string,
    whose implicit transaction it applies to (api.http.read_timeout.INLINE_OPTION). Without a
    pre-ping, a connection the server ended fails its statement with `connection_invalidated`
    set; such a read is run again once on a new connection
    (shared.queries.data_read.read_current_quotes), which also covers a backend ending between a
    ping and the statement.
    """
    options: dict[str, object] = {"pool_pre_ping": False, "isolation_level": "AUTOCOMMIT"}
    options.update(kwargs)
    engine = make_engine(url, **options)
    install_read_timeout(engine)
    return engine
