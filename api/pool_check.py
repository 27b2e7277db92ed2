"""The API's request engines (primary and replicas): pre-pinged pools, read timeouts."""
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
