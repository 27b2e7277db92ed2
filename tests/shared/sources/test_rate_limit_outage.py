"""The quota limiter waits out a quota store that stops answering (a restart, a failover)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from shared.config import RateLimit
from shared.errors import SourceError
from shared.sources import rate_limit
from shared.sources.rate_limit import RedisRateLimiter
from tests.redis_server import RedisServer

pytestmark = pytest.mark.processes  # a redis-server of the test's own


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server on a port of its own, not started yet."""
    found = RedisServer(tmp_path)
    yield found
    found.kill()


def test_a_store_that_comes_back_is_waited_for(server: RedisServer) -> None:
    """Nothing answers at first; the limiter asks again every STORE_RETRY_SECONDS and takes
    its slot from the store once it is up (here: after its second wait)."""
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            server.start()

    limiter = RedisRateLimiter(server.url, "coingecko", RateLimit(1, 60), sleep=sleep)
    assert limiter.acquire() > 0  # the outage counts as time waited
    assert waits == [rate_limit.STORE_RETRY_SECONDS] * 2
    # The slot was counted in the store: the next one must wait for the window.
    with pytest.raises(_Stop):
        RedisRateLimiter(server.url, "coingecko", RateLimit(1, 60), sleep=_stop).acquire()
    limiter.close()


class _Stop(Exception):
    pass


def _stop(seconds: float) -> None:
    raise _Stop(seconds)


def test_a_store_that_stays_away_fails_the_request(server: RedisServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Past STORE_OUTAGE_SECONDS the request fails (SourceError), never granted a slot
    without the store."""
    monkeypatch.setattr(rate_limit, "STORE_OUTAGE_SECONDS", 0.3)
    waits: list[float] = []
    limiter = RedisRateLimiter(server.url, "coingecko", RateLimit(1, 60), sleep=waits.append)
    with pytest.raises(SourceError, match="rate limiter store unavailable for 0s"):
        limiter.acquire()
    assert waits and set(waits) == {rate_limit.STORE_RETRY_SECONDS}
