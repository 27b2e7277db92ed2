"""The API as the benchmark serves it: the product app, with the per-client read quota lifted.

All load comes from one loopback address, so the 600/minute read quota would turn the
measurement into a measurement of 429s. The limiter still runs (its Redis round trip is part
of every request), only with a quota the benchmark cannot reach.

`bench.wsgi:app` is that app; `bench.wsgi:create(cache=False)` the same with the /data answer
cache turned off, so that every GET /data runs its queries (the cache-miss figures).
"""
from typing import Any

from api import create_app


def create(cache: bool = True) -> Any:
    """The benchmark app; `cache=False` turns off the per-process /data cache."""
    config: dict[str, Any] = {"RATELIMIT_READS": "100000000/minute"}
    if not cache:
        config["DATA_CACHE_MAX_BYTES"] = 0
    return create_app(config)


app = create()
