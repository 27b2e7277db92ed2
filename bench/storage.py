"""Bench case `storage`: bytes on disk per API quote and per CSV line, per table.

Loads through the task code the worker runs (bench.ticks.run_job, in process, on the bench's
database): N ticks of the replay upstream 300 s apart, every coin's price moved and its
`last_updated` set to the tick's time (each tick a new quote and a new raw item per coin, as
upstream every 300 s), then a CSV file of bench.gen. Sizes are read after VACUUM (heap with
its free-space and visibility maps, indexes, TOAST; a partitioned table's partitions summed
under it). The figure per API quote is marginal: ticks 2..N against the state after tick 1,
so the assets, their identities and the current quotes (made once per coin, not per quote)
are left out of it and shown apart. The baseline of the same run is the quotes table alone.
"""
from __future__ import annotations

import argparse
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from sqlalchemy import text

from bench.common import BENCH_DIR, BenchDatabase, Row, only, say
from bench.gen import kaggle_file
from bench.ticks import (
    API_SOURCES, MovingUpstream, grown, per_unit, run_job, table_sizes, vacuum,
)
from shared.config import load_settings
from shared.storage.compaction import compact
from shared.storage.usage import QUOTE_TABLES

GOAL_BYTES_PER_QUOTE = 250  # issue 24: everything kept, raw items included
TICK_SECONDS = 300  # the default schedule (ETL_SCHEDULE_SECONDS)
BENCH_REDIS_DB = 6  # the sources' quota windows; no test session uses 6 (tests take 15 down)


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """The case's options (`python -m bench --cases storage`)."""
    parser.add_argument("--storage-ticks", type=int, default=8,
                        help="storage: ticks of the replay upstream, 300 s apart (>= 2)")
    parser.add_argument("--storage-coins", type=int, default=17_000,
                        help="storage: CoinGecko coins served (68 pages of 250)")
    parser.add_argument("--storage-tickers", type=int, default=2_500,
                        help="storage: CoinPaprika tickers served")
    parser.add_argument("--storage-csv-coins", type=int, default=200)
    parser.add_argument("--storage-csv-days", type=int, default=1000)


def redis_env(env: Mapping[str, str], index: int = BENCH_REDIS_DB) -> str:
    """REDIS_URL of `env` on database `index`."""
    base = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    return base.rsplit("/", 1)[0] + f"/{index}" if base.count("/") >= 3 else f"{base}/{index}"


def count_quotes(db: BenchDatabase, sources: tuple[str, ...]) -> int:
    """Quotes stored of these sources."""
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM quotes WHERE source = ANY(:s)"),
                                {"s": list(sources)}).scalar_one())


def describe(delta: Mapping[str, Mapping[str, int]], units: int) -> str:
    """One line: each grown table's bytes per unit, split heap/index/TOAST."""
    parts = []
    for name, d in sorted(delta.items(), key=lambda kv: -kv[1]["total"]):
        parts.append(f"{name} {d['total'] / units:.1f} (heap {d['heap'] / units:.1f}, "
                     f"index {d['index'] / units:.1f}, TOAST {d['toast'] / units:.1f})")
    return "; ".join(parts)


def table_rows(label: str, delta: Mapping[str, Mapping[str, int]], units: int,
               unit: str) -> list[Row]:
    """A row per table holding at least 1% of the growth: B per unit and its share."""
    shares = per_unit(delta, units)
    total = shares.pop("all")
    return [Row(f"{label}: {name}", f"{value:.1f} B/{unit}", f"all tables {total:.1f} B/{unit}",
                value / total, "(info)", None)
            for name, value in shares.items() if value >= 0.01 * total]


def load_ticks(db: BenchDatabase, env: dict[str, str], ticks: int, coins: int,
               tickers: int) -> dict[str, Any]:
    """Tick 1, then ticks 2..N; sizes before, after tick 1 and at the end."""
    upstream = MovingUpstream(coins, tickers).start()
    try:
        settings = load_settings({**env, **upstream.env(), "REDIS_URL": redis_env(env)})
        now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        first = now - timedelta(seconds=TICK_SECONDS * ticks)
        vacuum(db.engine)
        sizes = [table_sizes(db.engine)]
        counts = [count_quotes(db, API_SOURCES)]
        seconds = []
        for tick in range(ticks):
            upstream.tick(first + timedelta(seconds=TICK_SECONDS * tick))
            started = time.perf_counter()
            job = run_job(db.engine, settings)
            seconds.append(time.perf_counter() - started)
            if job["status"] != "succeeded":
                raise RuntimeError(f"tick {tick + 1}: job {job}")
            say(f"storage: tick {tick + 1}/{ticks} in {seconds[-1]:.1f} s: " + ", ".join(
                f"{s} {r['fetched']}" for s, r in sorted(job["runs"].items())))
            if tick == 0 or tick == ticks - 1:
                vacuum(db.engine)
                sizes.append(table_sizes(db.engine))
                counts.append(count_quotes(db, API_SOURCES))
    finally:
        upstream.stop()
    # The same rows once their week is closed: beat's maintenance packs its key
    # (shared.storage.compaction), as it does for every week but the current one.
    compact(db.engine, now + timedelta(days=400), limit=1000)
    vacuum(db.engine)
    sizes.append(table_sizes(db.engine))
    return {"sizes": sizes, "counts": counts, "tick_seconds": seconds}


def load_csv(db: BenchDatabase, env: dict[str, str], coins: int, days: int) -> dict[str, Any]:
    """A bench.gen file of coins x days through a csv job; sizes before and after."""
    path = kaggle_file(BENCH_DIR / "data" / f"kaggle_{coins}x{days}.csv", coins, days)
    settings = load_settings({**env, "REDIS_URL": redis_env(env),
                              "CSV_DIR": str(only(BENCH_DIR / "csv-storage", path))})
    vacuum(db.engine)
    before, quotes_before = table_sizes(db.engine), count_quotes(db, ("csv",))
    job = run_job(db.engine, settings, ["csv"])
    if job["status"] != "succeeded":
        raise RuntimeError(f"csv job: {job}")
    vacuum(db.engine)
    return {"before": before, "after": table_sizes(db.engine),
            "lines": count_quotes(db, ("csv",)) - quotes_before, "file_bytes":
            path.stat().st_size}


def storage_cases(db: BenchDatabase, env: dict[str, str], args: argparse.Namespace
                  ) -> tuple[list[Row], dict[str, Any]]:
    """Bytes per API quote (marginal over ticks 2..N) and per CSV line, per table."""
    ticks = max(2, args.storage_ticks)
    db.truncate_all()
    say(f"storage: {ticks} ticks of {args.storage_coins:,} CoinGecko coins and "
        f"{args.storage_tickers:,} CoinPaprika tickers, then a {args.storage_csv_coins}x"
        f"{args.storage_csv_days} CSV file")
    api = load_ticks(db, env, ticks, args.storage_coins, args.storage_tickers)
    s0, s1, sn, packed_sizes = api["sizes"]
    q0, q1, qn = api["counts"]
    marginal, first = grown(s1, sn), grown(s0, s1)
    quotes = qn - q1
    csv = load_csv(db, env, args.storage_csv_coins, args.storage_csv_days)
    csv_delta = grown(csv["before"], csv["after"])
    per_quote, per_line = per_unit(marginal, quotes), per_unit(csv_delta, csv["lines"])
    # Once the week is closed: the quotes table over every tick's rows with its key packed
    # (rows of every tick cost alike), plus the raw items of ticks 2..N as above (tick 1's
    # pages are key frames; packing touches only quotes' keys).
    packed_quotes = per_unit(grown(s0, packed_sizes), qn - q0)["quotes"]
    packed = packed_quotes + sum(per_quote.get(t, 0.0) for t in QUOTE_TABLES if t != "quotes")
    quotes_only = per_quote.get("quotes", float("nan"))
    rows = [
        Row(f"S. disk per API quote, everything kept (ticks 2..{ticks}: {quotes:,} quotes)",
            f"{per_quote['all']:.0f} B", f"quotes table alone {quotes_only:.0f} B",
            per_quote["all"] / quotes_only, f"<= {GOAL_BYTES_PER_QUOTE} B",
            per_quote["all"] <= GOAL_BYTES_PER_QUOTE),
        *table_rows("S. per API quote", marginal, quotes, "quote"),
        Row("S. disk per API quote once its week is closed (its key packed by beat's "
            "compaction), everything kept", f"{packed:.0f} B",
            f"quotes table alone {packed_quotes:.0f} B", packed / packed_quotes,
            f"<= {GOAL_BYTES_PER_QUOTE} B", packed <= GOAL_BYTES_PER_QUOTE),
        Row(f"S. first tick, {q1 - q0:,} quotes of new coins (assets, identities, current "
            "quotes made once)", f"{per_unit(first, q1 - q0)['all']:.0f} B/quote",
            f"later ticks {per_quote['all']:.0f} B/quote",
            per_unit(first, q1 - q0)["all"] / per_quote["all"], "(info)", None),
        Row(f"S. disk per CSV line, everything kept ({csv['lines']:,} lines)",
            f"{per_line['all']:.0f} B", f"file {csv['file_bytes'] / csv['lines']:.0f} B/line",
            per_line["all"] / (csv["file_bytes"] / csv["lines"]), "(info)", None),
        *table_rows("S. per CSV line", csv_delta, csv["lines"], "line"),
    ]
    seconds = sorted(api["tick_seconds"])
    notes = [
        f"storage: per API quote, B (heap, index, TOAST): {describe(marginal, quotes)}",
        f"storage: quotes per API quote once the week's key is packed, B (heap, index): "
        f"{describe({'quotes': grown(s0, packed_sizes)['quotes']}, qn - q0)}",
        f"storage: per CSV line, B: {describe(csv_delta, csv['lines'])}",
        f"storage: a tick of {qn // ticks:,} quotes took {seconds[len(seconds) // 2]:.1f} s "
        "(median; in process, replay upstream in the same process, quotas lifted)",
    ]
    facts = {"ticks": ticks, "quotes": quotes, "per_quote": per_quote, "per_line": per_line,
             "marginal": marginal, "first": first, "csv": csv_delta,
             "tick_seconds": api["tick_seconds"], "notes": notes}
    return rows, facts
