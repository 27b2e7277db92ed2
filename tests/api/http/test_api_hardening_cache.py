"""The /data answer caches: junk parameters refused, memory bounded by what entries really take."""
from __future__ import annotations

import gc
import tracemalloc
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine

from api.http.answer_cache import ENTRY_OVERHEAD, VersionedCache, deep_size
from shared.config import Settings


@pytest.mark.parametrize("query", ["junk=1", "page=1&x-y=2", "symbol=BTC&Sort=-rank",
                                   "access_token=abc"])
def test_unknown_parameters_are_refused_and_never_cached(client: Any, clean_db: Engine,
                                                         query: str) -> None:
    """422 naming the parameter; the answer cache gets no entry for it."""
    for _ in range(2):
        response = client.get(f"/data?{query}")
        assert response.status_code == 422
        unknown = query.split("&")[-1].split("=")[0]
        assert unknown in response.get_json()["errors"]["query"]
    assert len(client.application.extensions["data_cache"]) == 0


def test_documented_parameters_still_answer(client: Any, clean_db: Engine) -> None:
    """Every documented parameter passes (the OpenAPI spec lists them)."""
    response = client.get("/data?source=csv&symbol=BTC&asset=1&q=bit&since=2020-01-01T00:00:00Z"
                          "&until=2030-01-01T00:00:00Z&sort=-price_usd&page=1&page_size=5")
    assert response.status_code == 200, response.get_json()


def _traced_growth(run: Any) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_distinct_query_strings_stay_within_the_configured_bytes(
    clean_db: Engine, settings: Settings,
) -> None:
    """4,000 distinct valid query strings (each its own answer and filter set): the memory
    the caches hold stays near their byte bounds, and what they count is what they take."""
    from api import create_app

    cache_bytes, totals_bytes = 512 * 1024, 256 * 1024
    app = create_app({"TESTING": True, "RATELIMIT_ENABLED": False,
                      "DATA_CACHE_MAX_BYTES": cache_bytes, "DATA_TOTALS_MAX_BYTES": totals_bytes},
                     settings=settings)
    client = app.test_client()
    cache, totals = app.extensions["data_cache"], app.extensions["data_totals"]
    start = datetime(2020, 1, 1, tzinfo=timezone.utc)
    # total=true: each request counts its filter set, so the totals cache fills too.
    assert client.get("/data?total=true").status_code == 200  # warm: imports, statements

    def fill(count: int, offset: int) -> None:
        for i in range(count):
            since = (start + timedelta(seconds=offset + i)).isoformat().replace("+00:00", "Z")
            assert client.get(f"/data?since={since}&page_size=7&total=true").status_code == 200

    # Below the bounds: what the caches count is most of what the process grew by (the rest:
    # the driver's and SQLAlchemy's own per-statement allocations).
    small = _traced_growth(lambda: fill(200, 0))
    assert len(cache) == 201 and len(totals) == 201
    counted = cache.cost + totals.cost
    print(f"200 entries: traced {small} B, counted {counted} B "
          f"(answers {cache.cost} B, totals {totals.cost} B)")
    assert 0.7 * small <= counted <= 1.2 * small, (small, counted)
    # Far past the bounds: evictions keep the holding near the bound.
    large = _traced_growth(lambda: fill(4000, 10_000))
    assert cache.cost <= cache_bytes and totals.cost <= totals_bytes
    print(f"4,000 more: traced {large} B, held {len(cache)} + {len(totals)} entries")
    assert large <= 1.3 * (cache_bytes + totals_bytes), large
    assert len(cache) < 1000


def test_entry_cost_counts_key_and_overhead() -> None:
    """With count_keys, a tiny value under a long key is charged for the key."""
    cache = VersionedCache(max_bytes=10_000, count_keys=True)
    key = b"x" * 1000
    cache.put(1, key, "v", 1)
    assert cache.cost == 1 + deep_size(key) + ENTRY_OVERHEAD
    for i in range(20):
        cache.put(1, key + str(i).encode(), "v", 1)
    assert cache.cost <= 10_000 and len(cache) < 10
    capped = VersionedCache(max_bytes=10**9, max_entries=5)
    for i in range(50):
        capped.put(1, i, i, 1)
    assert len(capped) == 5 and capped.get(1, 49) == 49 and capped.get(1, 0) is None
