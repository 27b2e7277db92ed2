"""`python -m bench.retention`: a week of quotes folded into hourly rollups and dropped.

Fills one weekly quotes partition 60 days back (`--assets` coins at one source, a quote every
5 minutes for 7 days), then times the steps retention takes on it (shared.storage.retention:
the fold alone in a rolled-back transaction, then the whole expiry: fold, DETACH
CONCURRENTLY, count (a second fold only if the rows changed), DROP), and a week of 1h candles
of one coin read from the full rows and from the rollup. Prints bytes and times (medians of
`--repeat`). Its own database on the local server, dropped at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from sqlalchemy import Engine, text

from bench.common import BenchDatabase, say
from scripts.stack import LOCAL_DATABASE_URL

UTC = timezone.utc


def _median_ms(action: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _bytes(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0) FROM pg_inherits i "
            "WHERE i.inhparent = CAST(:t AS regclass)"), {"t": table}).scalar_one())


def main(argv: list[str] | None = None) -> int:
    """Fill, measure, expire, measure again; print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__)
    parser.add_argument("--assets", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    db = BenchDatabase(os.environ.get("DATABASE_URL", LOCAL_DATABASE_URL))
    try:
        db.migrate(dict(os.environ))
        # Imported once the tree's settings can load (the database exists).
        from shared.config import load_settings
        from shared.storage.partitions import QUOTES, create_missing, ensure, unit
        from shared.storage.retention import expire
        from shared.storage.rollups import TO_HOURLY, fold

        now = datetime.now(UTC)
        low, high = unit(QUOTES, now - timedelta(days=60), now)
        ensure(db.engine, QUOTES, [(low, high - timedelta(microseconds=1))], now)
        say(f"filling {args.assets} coins x {7 * 288} quotes into {low:%Y-%m-%d}'s week")
        with db.engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd, "
                "volume_24h_usd, market_cap_usd) SELECT a, 'coingecko', "
                ":low + n * interval '5 minutes', 'coin-' || a, "
                "round((a + 100 * random())::numeric, 8), 1e6 + n, 1e9 + a "
                "FROM generate_series(1, :assets) a, generate_series(0, 7 * 288 - 1) n"),
                {"low": low, "assets": args.assets})
            conn.execute(text("ANALYZE quotes"))
        full_bytes = _bytes(db.engine, "quotes")
        candles = text(
            "SELECT date_bin('1 hour', observed_at, TIMESTAMPTZ '1970-01-01Z'), count(*) "
            "FROM quotes WHERE asset_id = 7 AND source = 'coingecko' "
            "AND observed_at >= :low AND observed_at < :high GROUP BY 1")
        rollup_candles = text(
            "SELECT bucket_start, quotes FROM quotes_hourly WHERE asset_id = 7 "
            "AND source = 'coingecko' AND bucket_start >= :low AND bucket_start < :high")

        def read(query: Any) -> None:
            with db.engine.connect() as conn:
                conn.execute(query, {"low": low, "high": high}).all()

        full_ms = _median_ms(lambda: read(candles), args.repeat)
        partition = QUOTES.partition_name(low, high)

        def fold_only() -> None:
            with db.engine.connect() as conn:
                with conn.begin() as tx:
                    create_missing(conn, TO_HOURLY.target, [(low, high)], now)
                    fold(conn, TO_HOURLY, partition, merge=False)
                    tx.rollback()

        say("timing the fold alone")
        fold_ms = _median_ms(fold_only, 3)
        settings = dataclasses.replace(load_settings({"DATABASE_URL": db.url}),
                                       quotes_full_resolution_days=30)
        started = time.perf_counter()
        dropped = expire(db.engine, settings, now)
        expire_s = time.perf_counter() - started
        rollup_ms = _median_ms(lambda: read(rollup_candles), args.repeat)
        rollup_bytes = _bytes(db.engine, "quotes_hourly")
        rows = args.assets * 7 * 288
        ratio = full_bytes / max(rollup_bytes, 1)
        print("\n".join([
            "",
            f"| what ({args.assets} coins, a week at 5 min: {rows:,} quotes) | figure |",
            "|---|---|",
            f"| quotes partition, table + indexes | {full_bytes / 1e6:,.1f} MB "
            f"({full_bytes / rows:.0f} B/quote) |",
            f"| its hourly rollup, table + index | {rollup_bytes / 1e6:,.1f} MB "
            f"({rollup_bytes / (rows / 12):.0f} B/row, 1/{ratio:.1f} of the bytes) |",
            f"| fold alone (INSERT ... SELECT ... ON CONFLICT), median of 3 | "
            f"{fold_ms / 1000:.2f} s |",
            f"| whole expiry: fold, DETACH CONCURRENTLY, count, DROP | {expire_s:.2f} s "
            f"({', '.join(dropped['quotes'])}) |",
            f"| a week of 1h candles of one coin: full rows / rollup, median of {args.repeat} "
            f"| {full_ms:.2f} ms / {rollup_ms:.2f} ms |",
        ]))
    finally:
        db.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
