"""What /status and an asset page cost on the three loaded sources, built and from the cache."""
from __future__ import annotations

import time
from typing import Any

from sqlalchemy import text


def _ms(client: Any, path: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    response = client.get(path)
    assert response.status_code == 200, path
    return (time.perf_counter() - started) * 1000, response.get_data()


def test_status_pages_are_cheap_and_a_cache_hit_is_cheaper(loaded: Any) -> None:
    with loaded.engine.connect() as conn:
        btc = conn.execute(text("SELECT id FROM assets WHERE slug = 'bitcoin'")).scalar_one()
    app = loaded.client.application
    app.config["STATUS_CACHE_SECONDS"] = 3600  # no time slot ends between the miss and hits
    cache = app.extensions["status_cache"]
    for path in ("/status", f"/status/assets/{btc}"):
        loaded.client.get("/metrics")  # warm: the worker ping both pages share (cached 5 s)
        cache._entries.clear()  # a miss: built from the database
        built, page = _ms(loaded.client, path)
        hits = [_ms(loaded.client, path) for _ in range(20)]
        hit = sorted(ms for ms, _ in hits)[10]
        assert all(body == page for _, body in hits)
        print(f"{path}: built {built:.1f} ms, {len(page)} bytes; cache hit median {hit:.2f} ms")
        assert built < 2000
        assert hit < built / 3
