"""Partition size for `quotes`: insert speed, sizes and planning time of one layout against another.

`python -m bench.partitions` builds, in a database of its own, one copy of the quotes table
per layout (unpartitioned, monthly, weekly, ...), each with the quotes' columns and primary
key, and fills each the same way: CSV-like history (one row per coin per day, coins starting
on staggered days from 2013-04-28 to 2021-07-06, as the Kaggle files do) and then live ticks
at the default schedule (CoinGecko's ~17,000 and CoinPaprika's ~2,000 coins every 300 s,
one COPY per tick, as the batch writer sends them). It reports the insert rates, the bytes
per row and per partition, and the planning and execution time of the statements that read
quotes without a time bound (the per-batch publish, the first-quote probe, a history page
with no range) or with one (as_of, a 30-day history page, a day of candles, the writer's
key probe), as psycopg2 sends them (literals: planned on every call). Not a pass/fail test.
"""
from __future__ import annotations

import argparse
import functools
import io
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from sqlalchemy import text

from bench.common import BenchDatabase, say
from scripts.stack import LOCAL_DATABASE_URL, ROOT

UTC = timezone.utc
HISTORY_FIRST = date(2013, 4, 28)
HISTORY_LAST = date(2021, 7, 6)
TICK_SECONDS = 300
# Where the simulated live day starts: a Sunday noon, so that the day crosses a week boundary
# (the weekly layout switches partitions mid-load, the monthly one does not).
LIVE_START = datetime(2026, 11, 29, 12, tzinfo=UTC)
# Partitions are made up to here, as the maintenance task makes them ahead.
AHEAD_UNTIL = datetime(2027, 1, 1, tzinfo=UTC)
# Mixed layouts: yearly partitions before this, the live grain from it.
CUTOVER = datetime(2026, 1, 1, tzinfo=UTC)

COLUMNS = """
    asset_id bigint NOT NULL, source varchar(32) NOT NULL, observed_at timestamptz NOT NULL,
    source_asset_id varchar(300) NOT NULL, price_usd numeric, market_cap_usd numeric,
    volume_24h_usd numeric, circulating_supply numeric, total_supply numeric,
    max_supply numeric, rank integer, open_usd numeric, high_usd numeric, low_usd numeric,
    close_usd numeric, raw_hash bytea, run_id bigint,
    PRIMARY KEY (asset_id, source, observed_at)
"""
COPY_COLUMNS = ("asset_id, source, observed_at, source_asset_id, price_usd, market_cap_usd, "
                "volume_24h_usd, circulating_supply, total_supply, max_supply, rank, "
                "raw_hash, run_id")

Bounds = list[tuple[datetime, datetime]]


def _month_start(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def _next_month(moment: datetime) -> datetime:
    return datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)


def _week_start(moment: datetime) -> datetime:
    day = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    return day - timedelta(days=day.weekday())


def _steps(first: datetime, start: Callable[[datetime], datetime],
           following: Callable[[datetime], datetime]) -> Bounds:
    bounds: Bounds = []
    low = start(first)
    while low < AHEAD_UNTIL:
        high = following(low)
        bounds.append((low, high))
        low = high
    return bounds


def _years(first: datetime, until: datetime) -> Bounds:
    bounds: Bounds = []
    low = datetime(first.year, 1, 1, tzinfo=UTC)
    while low < until:
        high = datetime(low.year + 1, 1, 1, tzinfo=UTC)
        bounds.append((low, high))
        low = high
    return bounds


def layout_bounds(layout: str) -> Bounds | None:
    """The partitions of a layout, oldest first (None: an unpartitioned table).

    `year+month` and `year+week`: history in yearly partitions up to CUTOVER, then a year of
    live data's worth of monthly or weekly ones (the first clipped to start at CUTOVER).
    """
    first = datetime.combine(HISTORY_FIRST, datetime.min.time(), UTC)
    grains: dict[str, tuple[Callable[[datetime], datetime], Callable[[datetime], datetime]]] = {
        "month": (_month_start, _next_month),
        "week": (_week_start, lambda low: low + timedelta(days=7)),
        "day": (lambda m: datetime(m.year, m.month, m.day, tzinfo=UTC),
                lambda low: low + timedelta(days=1)),
    }
    if layout == "flat":
        return None
    if layout in grains:
        return _steps(first, *grains[layout])
    head, _, grain = layout.partition("+")
    if head == "year" and grain in grains:
        live = _steps(CUTOVER, *grains[grain])
        return _years(first, CUTOVER) + [(max(low, CUTOVER), high) for low, high in live]
    raise ValueError(f"unknown layout {layout!r}")


@dataclass
class Measured:
    """What one layout measured."""

    layout: str
    partitions: int = 0
    ddl_seconds: float = 0.0
    history_rows: int = 0
    history_seconds: float = 0.0
    live_rows: int = 0
    live_seconds: float = 0.0
    tick_ms: list[float] = field(default_factory=list)
    total_bytes: int = 0
    index_bytes: int = 0
    largest_partition_rows: int = 0
    largest_partition_bytes: int = 0
    queries: dict[str, tuple[float, float]] = field(default_factory=dict)


def create_layout(conn: Any, table: str, bounds: Bounds | None) -> None:
    """The table, and its partitions when partitioned."""
    cur = conn.cursor()
    cur.execute(f"DROP TABLE IF EXISTS {table}")
    suffix = "" if bounds is None else " PARTITION BY RANGE (observed_at)"
    cur.execute(f"CREATE TABLE {table} ({COLUMNS}){suffix}")
    for low, high in bounds or []:
        cur.execute(f"CREATE TABLE {table}_{low:%Y%m%d}_{high:%Y%m%d} PARTITION OF {table} "
                    f"FOR VALUES FROM ('{low.isoformat()}') TO ('{high.isoformat()}')")
    conn.commit()


def _history_rows(coins: int) -> Iterator[str]:
    """CSV-like rows: coin n starts n days after HISTORY_FIRST (wrapping), one row a day."""
    span = (HISTORY_LAST - HISTORY_FIRST).days
    rng = random.Random(1)
    for coin in range(1, coins + 1):
        first = HISTORY_FIRST + timedelta(days=(coin * 7) % span)
        price = rng.uniform(0.01, 1000)
        day = first
        while day <= HISTORY_LAST:
            price *= rng.uniform(0.95, 1.05)
            yield (f"{coin}\tcsv\t{day.isoformat()}T23:59:59+00:00\tcoin-{coin}\t{price:.8f}\t"
                   f"{price * 1e7:.2f}\t{price * 1e5:.2f}\t\\N\t\\N\t\\N\t\\N\t"
                   f"\\\\x{rng.getrandbits(256):064x}\t1\n")
            day += timedelta(days=1)


def _tick_rows(at: datetime, coins: dict[str, int], rng: random.Random) -> str:
    """One tick of the default schedule: every coin of every API source at `at`."""
    stamp = at.isoformat()
    parts = []
    for source, count in coins.items():
        for coin in range(1, count + 1):
            price = rng.uniform(0.0001, 70000)
            parts.append(
                f"{coin}\t{source}\t{stamp}\t{source}-coin-{coin}\t{price:.10g}\t"
                f"{price * 19e6:.2f}\t{price * 1e6:.2f}\t19000000\t21000000\t21000000\t"
                f"{coin}\t\\\\x{rng.getrandbits(256):064x}\t2\n")
    return "".join(parts)


def _copy(conn: Any, table: str, data: str) -> float:
    cur = conn.cursor()
    started = time.perf_counter()
    cur.copy_expert(f"COPY {table} ({COPY_COLUMNS}) FROM STDIN", io.StringIO(data), 1 << 20)
    conn.commit()
    return time.perf_counter() - started


def fill(conn: Any, table: str, measured: Measured, history_coins: int, ticks: int,
         coins: dict[str, int]) -> None:
    """History in COPYs of 100,000 rows, then `ticks` live ticks, one COPY each."""
    chunk: list[str] = []
    for row in _history_rows(history_coins):
        chunk.append(row)
        if len(chunk) == 100_000:
            measured.history_seconds += _copy(conn, table, "".join(chunk))
            measured.history_rows += len(chunk)
            chunk = []
    if chunk:
        measured.history_seconds += _copy(conn, table, "".join(chunk))
        measured.history_rows += len(chunk)
    rng = random.Random(2)
    for tick in range(ticks):
        data = _tick_rows(LIVE_START + timedelta(seconds=TICK_SECONDS * tick), coins, rng)
        seconds = _copy(conn, table, data)
        measured.tick_ms.append(seconds * 1000)
        measured.live_seconds += seconds
        measured.live_rows += sum(coins.values())
    conn.commit()
    dbapi = conn.driver_connection  # the pool's proxy would not pass autocommit on
    dbapi.autocommit = True
    dbapi.cursor().execute(f"VACUUM ANALYZE {table}")
    dbapi.autocommit = False


def _queries(table: str, ticks: int) -> dict[str, str]:
    """The statements measured, as the product sends them (literal values)."""
    last_tick = LIVE_START + timedelta(seconds=TICK_SECONDS * max(ticks - 1, 0))
    assets = "ARRAY[" + ",".join(str(n) for n in range(1, 251)) + "]::bigint[]"
    spans_ids = "ARRAY[" + ",".join(str(n) for n in range(1, 251)) + "]::bigint[]"
    at = f"'{last_tick.isoformat()}'::timestamptz"
    month_ago = f"'{(last_tick - timedelta(days=30)).isoformat()}'::timestamptz"
    day_ago = f"'{(last_tick - timedelta(days=1)).isoformat()}'::timestamptz"
    spans_at = "ARRAY[" + ",".join([at] * 250) + "]::timestamptz[]"
    return {
        # shared.ingest.publish: newest quote per asset, no time bound (per batch).
        "publish 250 live assets": f"""
            SELECT q.* FROM unnest({assets}) AS t(asset_id) CROSS JOIN LATERAL (
              SELECT * FROM {table} q WHERE q.asset_id = t.asset_id AND q.source = 'coingecko'
              ORDER BY q.observed_at DESC LIMIT 1) q""",
        "publish 250 CSV assets (ended 2021)": f"""
            SELECT q.* FROM unnest({assets}) AS t(asset_id) CROSS JOIN LATERAL (
              SELECT * FROM {table} q WHERE q.asset_id = t.asset_id AND q.source = 'csv'
              ORDER BY q.observed_at DESC LIMIT 1) q""",
        # shared.ingest.batch_writer._KEYS_IN_SPANS for a page of 250 live quotes.
        "writer key probe (250 spans)": f"""
            SELECT EXISTS (SELECT 1 FROM unnest({spans_ids}, {spans_at}, {spans_at})
              AS span(asset_id, first_at, last_at) WHERE EXISTS (
              SELECT 1 FROM {table} q WHERE q.asset_id = span.asset_id
              AND q.source = 'coingecko' AND q.observed_at BETWEEN span.first_at
              AND span.last_at))""",
        # shared.queries.assets.first_observed: min() per source, no time bound.
        "first quote of a live asset": f"""
            SELECT min(observed_at) FROM {table} WHERE asset_id = 7 AND source = 'coingecko'""",
        # A history page with neither since nor until: newest first, no time bound.
        "history page, no range": f"""
            SELECT * FROM {table} WHERE asset_id = 7
            ORDER BY observed_at DESC, source DESC LIMIT 51""",
        "history page, 30 days": f"""
            SELECT * FROM {table} WHERE asset_id = 7
              AND observed_at >= {month_ago} AND observed_at <= {at}
            ORDER BY observed_at DESC, source DESC LIMIT 51""",
        "as_of 2019-06-01 (3 sources)": f"""
            SELECT q.* FROM unnest(ARRAY['coingecko','coinpaprika','csv']) AS s(source)
            CROSS JOIN LATERAL (SELECT * FROM {table} WHERE asset_id = 7
              AND source = s.source AND observed_at <= '2019-06-01T00:00:00+00:00'
              ORDER BY observed_at DESC LIMIT 1) q""",
        "candles, 1 day hourly": f"""
            SELECT date_bin('1 hour', observed_at, TIMESTAMPTZ '1970-01-01'), count(*),
                   max(price_usd), min(price_usd)
            FROM {table} WHERE asset_id = 7 AND source = 'coingecko'
              AND observed_at >= {day_ago} AND observed_at < {at}
            GROUP BY 1 ORDER BY 1""",
    }


def time_queries(conn: Any, table: str, ticks: int, repeat: int
                 ) -> dict[str, tuple[float, float]]:
    """Median (planning ms, execution ms) of each statement, run `repeat` times."""
    cur = conn.cursor()
    found: dict[str, tuple[float, float]] = {}
    for name, sql in _queries(table, ticks).items():
        planning, execution = [], []
        for _ in range(repeat + 1):
            cur.execute(f"EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON, FORMAT JSON) {sql}")
            plan = cur.fetchone()[0][0]
            planning.append(float(plan["Planning Time"]))
            execution.append(float(plan["Execution Time"]))
        conn.rollback()
        # The first run warms the relation cache of a new connection: not counted.
        found[name] = (statistics.median(planning[1:]), statistics.median(execution[1:]))
    return found


def sizes(conn: Any, table: str, measured: Measured) -> None:
    """Total and index bytes, and the largest partition's rows and bytes."""
    cur = conn.cursor()
    cur.execute("""
        WITH parts AS (
          SELECT c.oid FROM pg_class c WHERE c.oid = %(t)s::regclass AND c.relkind = 'r'
          UNION ALL
          SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = %(t)s::regclass)
        SELECT coalesce(sum(pg_total_relation_size(oid)), 0),
               coalesce(sum(pg_indexes_size(oid)), 0),
               coalesce(max(pg_total_relation_size(oid)), 0)
        FROM parts""", {"t": table})
    measured.total_bytes, measured.index_bytes, measured.largest_partition_bytes = (
        int(v) for v in cur.fetchone())
    cur.execute(f"SELECT count(*) FROM {table} GROUP BY tableoid ORDER BY 1 DESC LIMIT 1")
    measured.largest_partition_rows = int(cur.fetchone()[0])
    conn.rollback()


def report(results: list[Measured], args: argparse.Namespace) -> str:
    """The figures as Markdown."""
    lines = [f"history coins {args.history_coins}, live ticks {args.ticks} of "
             f"{args.gecko_coins + args.paprika_coins} quotes, query medians of {args.repeat}", ""]
    lines.append("| layout | partitions | DDL s | history rows/s | live rows/s | tick ms "
                 "(first 10 / last 10 median) | total MB | index MB | B/row | largest "
                 "partition rows / MB |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for m in results:
        rows = m.history_rows + m.live_rows
        first = statistics.median(m.tick_ms[:10]) if m.tick_ms else 0.0
        last = statistics.median(m.tick_ms[-10:]) if m.tick_ms else 0.0
        lines.append(
            f"| {m.layout} | {m.partitions} | {m.ddl_seconds:.1f} | "
            f"{m.history_rows / max(m.history_seconds, 1e-9):,.0f} | "
            f"{m.live_rows / max(m.live_seconds, 1e-9):,.0f} | {first:.0f} / {last:.0f} | "
            f"{m.total_bytes / 2**20:,.0f} | {m.index_bytes / 2**20:,.0f} | "
            f"{m.total_bytes / max(rows, 1):.0f} | {m.largest_partition_rows:,} / "
            f"{m.largest_partition_bytes / 2**20:,.0f} |")
    lines += ["", "| statement (planning ms / execution ms) | "
              + " | ".join(m.layout for m in results) + " |",
              "|---|" + "---|" * len(results)]
    for name in results[0].queries:
        cells = [f"{m.queries[name][0]:.2f} / {m.queries[name][1]:.2f}" for m in results]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Quotes as the default schedule stores them (19,000 coins of two API sources a tick, every 300
# s, ending now) plus one CSV-like history row per coin per day: what migration 0018 converts.
_MIGRATION_FILL = """
INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd, market_cap_usd,
                    volume_24h_usd, circulating_supply, total_supply, max_supply, rank, raw_hash,
                    run_id)
SELECT a, CASE WHEN a <= 17000 THEN 'coingecko' ELSE 'coinpaprika' END,
       date_trunc('hour', now()) - t * interval '300 seconds', 'coin-' || a,
       a * 1.25 + t, a * 1e9 + t, a * 1e6, 19e6, 21e6, 21e6, a,
       sha256(convert_to(a || ':' || t, 'UTF8')), t
FROM generate_series(0, %(ticks)s - 1) t, generate_series(1, 19000) a
"""


def migration_case(db: BenchDatabase, ticks: int) -> str:
    """Migration 0018 on `ticks` ticks of quotes (19,000 each): its seconds per million rows."""
    env = {**os.environ, "DATABASE_URL": db.url}
    run = functools.partial(subprocess.run, cwd=ROOT, env=env, capture_output=True, text=True,
                            check=True)
    run([sys.executable, "-m", "flask", "--app", "api", "db", "upgrade", "0017"])
    raw = db.engine.raw_connection()
    try:
        raw.cursor().execute(_MIGRATION_FILL, {"ticks": ticks})
        raw.commit()
    finally:
        raw.close()
    with db.engine.connect() as conn:
        rows = int(conn.execute(text("SELECT count(*) FROM quotes")).scalar_one())
        size = int(conn.execute(text("SELECT pg_total_relation_size('quotes')")).scalar_one())
    db.checkpoint()
    started = time.perf_counter()
    done = run([sys.executable, "-m", "flask", "--app", "api", "db", "upgrade"])
    seconds = time.perf_counter() - started
    progress = [line for line in done.stdout.splitlines() + done.stderr.splitlines()
                if "quotes: " in line]
    return (f"migration 0018: {rows:,} quotes ({size / 2**20:,.0f} MB) in {seconds:.1f} s: "
            f"{seconds / rows * 1e6:.1f} s per million rows ({rows / seconds:,.0f} rows/s)\n"
            + "\n".join(progress[-3:]) + "\n")


def fill_probe(db: BenchDatabase, ticks: int, probes: int, coins: dict[str, int]) -> str:
    """Tick COPY time into a partition already holding `ticks` ticks against an empty one.

    One partitioned table, two partitions: the full one's ticks first, then `probes` ticks
    into each, alternating (so the machine's load falls on both alike); medians.
    """
    day = timedelta(days=1)
    start = LIVE_START.replace(hour=0)
    bounds: Bounds = [(start, start + day), (start + day, start + 2 * day)]
    rng = random.Random(3)
    raw = db.engine.raw_connection()
    try:
        create_layout(raw, "q_probe", bounds)
        step = timedelta(seconds=day.total_seconds() / (ticks + probes))
        for tick in range(ticks):
            _copy(raw, "q_probe", _tick_rows(start + step * tick, coins, rng))
        dbapi = raw.driver_connection
        dbapi.autocommit = True
        dbapi.cursor().execute("VACUUM ANALYZE q_probe")
        dbapi.autocommit = False
        db.checkpoint()
        full: list[float] = []
        empty: list[float] = []
        for probe in range(probes):
            at = start + step * (ticks + probe)
            full.append(_copy(raw, "q_probe", _tick_rows(at, coins, rng)) * 1000)
            empty.append(_copy(raw, "q_probe", _tick_rows(at + day, coins, rng)) * 1000)
        cur = raw.cursor()
        cur.execute("SELECT pg_indexes_size(%s::regclass)",
                    (f"q_probe_{start:%Y%m%d}_{start + day:%Y%m%d}",))
        index_mb = int(cur.fetchone()[0]) / 2**20
        raw.rollback()
    finally:
        raw.close()
    rows = sum(coins.values())
    return (f"tick of {rows:,} quotes: {statistics.median(full):.0f} ms into a partition of "
            f"{ticks * rows:,} rows (index {index_mb:,.0f} MB), {statistics.median(empty):.0f} "
            f"ms into an empty one (medians of {probes}, alternating)\n")


def main(argv: list[str] | None = None) -> int:
    """Build each layout, fill it, measure it, print the tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.partitions", description=__doc__)
    parser.add_argument("--layouts", default="flat,month,week")
    parser.add_argument("--history-coins", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=288, help="288: one day at 300 s")
    parser.add_argument("--gecko-coins", type=int, default=17_000)
    parser.add_argument("--paprika-coins", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--migration-ticks", type=int, default=0,
                        help="instead: time migration 0018 on this many ticks of 19,000 quotes")
    parser.add_argument("--fill-probe", type=int, default=0,
                        help="instead: tick time into a partition of this many ticks vs empty")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args(argv)
    db = BenchDatabase(os.environ.get("DATABASE_URL", LOCAL_DATABASE_URL))
    say(f"database {db.name}")
    coins = {"coingecko": args.gecko_coins, "coinpaprika": args.paprika_coins}
    if args.migration_ticks or args.fill_probe:
        try:
            print(migration_case(db, args.migration_ticks) if args.migration_ticks else
                  fill_probe(db, args.fill_probe, 20, coins))
        finally:
            if not args.keep_db:
                db.drop()
        return 0
    results: list[Measured] = []
    try:
        for layout in args.layouts.split(","):
            table = "q_" + layout.replace("+", "_")
            bounds = layout_bounds(layout)
            measured = Measured(layout, partitions=len(bounds or []))
            raw = db.engine.raw_connection()
            try:
                started = time.perf_counter()
                create_layout(raw, table, bounds)
                measured.ddl_seconds = time.perf_counter() - started
                say(f"{layout}: {measured.partitions} partitions, filling")
                fill(raw, table, measured, args.history_coins, args.ticks, coins)
                db.checkpoint()
                sizes(raw, table, measured)
            finally:
                raw.close()
            # A fresh connection, as a request gets (its relation cache is cold once).
            raw = db.engine.raw_connection()
            try:
                measured.queries = time_queries(raw, table, args.ticks, args.repeat)
            finally:
                raw.close()
            results.append(measured)
            say(f"{layout}: done\n{report([measured], args)}")
            if not args.keep_db:
                with db.engine.begin() as conn:
                    conn.execute(text(f"DROP TABLE {table}"))
        print(report(results, args))
    finally:
        if not args.keep_db:
            db.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
