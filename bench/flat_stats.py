"""`python -m bench.flat_stats`: /stats and /metrics at N quotes, and the count they replaced.

Fills a scratch database (migrated as `make run` does, dropped at the end) with N synthetic
quotes (1,000 assets x 3 sources, a minute apart, COPY-free INSERT ... SELECT), adds them to
the kept counts as the batch writer would, and times, median of `--repeat`: GET /stats and
GET /metrics through the Flask test client (Redis pointed at a closed port, so the broker's
probes fail fast and only the database is timed), and the statement the old /stats and
/metrics ran first, `SELECT source, count(*) FROM quotes GROUP BY source`. Figures:
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

from sqlalchemy import text

from bench.common import BenchDatabase
from scripts.stack import ensure_services

_FILL = text("""
INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd, run_id)
SELECT i % 1000 + 1, (ARRAY['coingecko', 'coinpaprika', 'csv'])[(i / 1000) % 3 + 1],
       date_trunc('day', now()) + (i / 3000) * interval '1 minute', 'coin' || (i % 1000),
       100 + (i % 997) / 10.0, 1
FROM generate_series(:start, :stop - 1) AS i
""")


def _median_ms(call: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


def main() -> None:
    """Fill to each --quotes size in turn and print the timings at each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quotes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    services = ensure_services()
    db = BenchDatabase(services.database_url)
    env = {**os.environ, **services.env(), "REDIS_URL": "redis://127.0.0.1:1/0"}
    try:
        db.migrate(env)
        os.environ.update({"DATABASE_URL": db.url, "REDIS_URL": env["REDIS_URL"]})
        from api import create_app

        client = create_app({"TESTING": True, "RATELIMIT_ENABLED": False}).test_client()
        filled = 0
        print("quotes | GET /stats ms | GET /metrics ms | old count(*) of quotes ms")
        for target in sorted(args.quotes):
            with db.engine.begin() as conn:
                conn.execute(text("SET LOCAL synchronous_commit = off"))
                conn.execute(_FILL, {"start": filled, "stop": target})
                # What the batch writer would have kept (counted once here, not timed).
                conn.execute(text("DELETE FROM layer_counts WHERE layer = 'quotes'"))
                conn.execute(text("INSERT INTO layer_counts (source, layer, n) "
                                  "SELECT source, 'quotes', count(*) FROM quotes GROUP BY 1"))
            filled = target
            with db.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                    text("VACUUM ANALYZE quotes"))
            for path in ("/stats", "/metrics"):
                assert client.get(path).status_code == 200, path  # warm
            stats = _median_ms(lambda: client.get("/stats"), args.repeat)
            metrics = _median_ms(lambda: client.get("/metrics"), args.repeat)
            with db.engine.connect() as conn:
                old = _median_ms(lambda: conn.execute(text(
                    "SELECT source, count(*) FROM quotes GROUP BY source")).all(), args.repeat)
            print(f"{target:,} | {stats} | {metrics} | {old}", flush=True)
    finally:
        db.drop()


if __name__ == "__main__":
    main()
