"""Bench case `longrun`: weeks of the schedule fast-forward on a simulated clock, with retention.

The replay upstream (bench.ticks.MovingUpstream) is ticked a few times per simulated day,
each tick's `last_updated` (so each quote's observed_at) on the simulated clock, days ending
at today 00:00 UTC; each tick is a job through the task code (in process). After each day
beat's storage upkeep runs with `now=` the day's end: `shared.storage.partitions.maintain` and,
when the tree has them, `shared.storage.usage.maintain`, retention
(`shared.storage.retention.expire`) with the named profile's settings (bench.capacity.PROFILES)
and a day of closed weeks' key packing (`shared.storage.compaction.compact`). Per day it
records the database's size and each table's. It times /stats, /metrics, /data?page_size=100
and three history pages on the last day against a copy of day 1's database, requests
alternating (the product app in process, answer cache off, medians).

Raw rows take their time from the database clock (now()), not the simulated one. Bench-only,
after each tick the raw item blocks it wrote are moved to the tick's simulated time with an
UPDATE (their partition made first), so raw retention sees simulated ages; a tree whose raw
items are `raw_records` rows (not partitioned, no retention) keeps them on the real clock, and
the output says which was done. No production setting knows the simulated clock.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from bench.capacity import PROFILES, Profile
from bench.common import BenchDatabase, Row, say
from bench.storage import redis_env
from bench.ticks import MovingUpstream, run_job, table_sizes, vacuum
from shared.config import Settings, load_settings
from shared.db import unit_of_work
from shared.storage import partitions

# The history pages: the newest 100 of one asset and source (with a few ticks a simulated
# day that reaches past the full-resolution horizon into the rollups, which 288 ticks a day
# would not) and the newest 10 (within the horizon, as a page of the real schedule is). Day 1
# holds only a day's ticks of an asset and source, so those pages return fewer rows on day 1
# than on the last day; "history 1 day" (page size = ticks a day) returns as many rows on both,
# the like-for-like measure of a page's cost against the history kept.
ENDPOINTS = ("/stats", "/metrics", "/data?page_size=100", "history 100", "history 10",
             "history 1 day")
GOAL_API_RATIO = 1.2


def add_longrun_arguments(parser: argparse.ArgumentParser) -> None:
    """The case's options (`python -m bench --cases longrun`)."""
    parser.add_argument("--longrun-days", type=int, default=60, help="longrun: simulated days")
    parser.add_argument("--longrun-ticks", type=int, default=3,
                        help="longrun: ticks per simulated day")
    # Scaled down by default: a tick of the real size (17,000 + 2,500) took 11-19 s in
    # process on the shared 2-core machine, 60 days x 3 ticks about 45 minutes; 1,250
    # coins take ~1.3 s a tick. The output says which size ran.
    parser.add_argument("--longrun-coins", type=int, default=1_000,
                        help="longrun: CoinGecko coins served (17,000: real size)")
    parser.add_argument("--longrun-tickers", type=int, default=250,
                        help="longrun: CoinPaprika tickers served (2,500: real size)")
    parser.add_argument("--longrun-profile", default="year-100gb", choices=sorted(PROFILES),
                        help="longrun: retention profile (bench/capacity.py, docs/capacity.md)")
    parser.add_argument("--longrun-samples", type=int, default=15,
                        help="longrun: requests per endpoint timed on the first and last day")


def tick_times(day_start: datetime, ticks: int) -> list[datetime]:
    """The simulated times of a day's ticks: evenly spread, the first at the day's start."""
    step = timedelta(seconds=86_400 / ticks)
    return [day_start + i * step for i in range(ticks)]


def simulated_days(today: datetime, days: int) -> list[datetime]:
    """The starts of `days` simulated days, the last ending at `today` 00:00 UTC."""
    midnight = today.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return [midnight - timedelta(days=days - d) for d in range(days)]


def raw_item_table(engine: Engine) -> str | None:
    """`raw_item_blocks` when this tree stores API items in blocks (partitioned), else None."""
    with engine.connect() as conn:
        return "raw_item_blocks" if conn.execute(text(
            "SELECT to_regclass('raw_item_blocks') IS NOT NULL")).scalar_one() else None


def move_raw(engine: Engine, table: str, since: datetime, at: datetime) -> int:
    """Bench-only: the raw rows written since `since` (database clock) moved to `at`."""
    spec = next(t for t in partitions.PARTITIONED_TABLES if t.name == table)
    partitions.ensure(engine, spec, [(at, at)], at)
    with engine.begin() as conn:
        return conn.execute(text(f"UPDATE {table} SET fetched_at = :at WHERE fetched_at >= :since"),
                            {"at": at, "since": since}).rowcount


def retention_step(engine: Engine, settings: Settings) -> Callable[[datetime], Any] | None:
    """The tree's retention upkeep as a function of `now`, or None when it has none yet."""
    try:
        module = importlib.import_module("shared.storage.retention")
    except ImportError:
        return None
    expire = getattr(module, "expire", None)
    if expire is None:
        return None
    return lambda now: expire(engine, settings, now=now)


def usage_step(engine: Engine) -> Callable[[datetime], Any] | None:
    """Beat's hourly usage upkeep (kept counts folded, size sampled) as a function of `now`,
    or None when the tree has none: without it the counts' deltas pile up as they never do."""
    try:
        module = importlib.import_module("shared.storage.usage")
    except ImportError:
        return None
    maintain = getattr(module, "maintain", None)
    if maintain is None:
        return None

    def step(now: datetime) -> None:
        with unit_of_work(engine) as session:
            maintain(session, now)
    return step


def compaction_step(engine: Engine) -> Callable[[datetime], Any] | None:
    """A day of beat's hourly key packing (one closed partition an hour) as a function of
    `now`, or None when the tree has none."""
    try:
        module = importlib.import_module("shared.storage.compaction")
    except ImportError:
        return None
    return lambda now: module.compact(engine, now, limit=24)


def time_requests(clients: dict[str, Any], paths: dict[str, str], samples: int
                  ) -> dict[str, dict[str, float]]:
    """Median ms per client and path, the clients' requests alternating (so a slow spell of
    the shared machine hits both); one unmeasured request each first; all must be 200."""
    out: dict[str, dict[str, float]] = {label: {} for label in clients}
    for name, path in paths.items():
        times: dict[str, list[float]] = {label: [] for label in clients}
        for label, client in clients.items():
            if client.get(path).status_code != 200:
                raise RuntimeError(f"GET {path} ({label}): not 200")
        for _ in range(samples):
            for label, client in clients.items():
                started = time.perf_counter()
                response = client.get(path)
                times[label].append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"GET {path} ({label}): {response.status_code}")
        for label in clients:
            out[label][name] = statistics.median(times[label])
    return out


def snapshot(db: BenchDatabase, app: Any) -> str | None:
    """A copy of the bench database as it is now (CREATE DATABASE ... TEMPLATE), so day 1 can
    be timed again beside the last day; None when the server refuses (a session still on it)."""
    from api.db import release_connections

    release_connections(app)
    db.engine.dispose()
    name = f"{db.name}_day1"
    try:
        with db.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{db.name}"'))
    except Exception as exc:  # noqa: BLE001 - reported; day 1 is then timed in place only
        say(f"longrun: no copy of day 1 ({exc}); day 1 timed in place only")
        return None
    return name


def drop_snapshot(db: BenchDatabase, name: str | None) -> None:
    """Drop the day-1 copy."""
    if name:
        with db.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def api_paths(engine: Engine, ticks: int) -> dict[str, str]:
    """The timed requests; history pages of the first CoinGecko asset: newest 100, 10 and
    `ticks` (a simulated day's)."""
    with engine.connect() as conn:
        asset = conn.execute(text("SELECT min(asset_id) FROM current_quotes "
                                  "WHERE source = 'coingecko'")).scalar_one()
    paths = {name: name for name in ENDPOINTS if not name.startswith("history")}
    for name, size in (("history 100", 100), ("history 10", 10), ("history 1 day", ticks)):
        paths[name] = f"/data/{asset}/history?source=coingecko&page_size={size}"
    return paths


def page_rows(clients: dict[str, Any], paths: dict[str, str]) -> dict[str, dict[str, int]]:
    """Rows each client's history pages return (what a page's time is per)."""
    return {label: {name: len(client.get(path).get_json()["data"])
                    for name, path in paths.items() if name.startswith("history")}
            for label, client in clients.items()}


def day_record(engine: Engine, day: int, end: datetime) -> dict[str, Any]:
    """The database's bytes and each table's, after VACUUM, at the end of simulated `day`."""
    vacuum(engine)
    with engine.connect() as conn:
        size = int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
        quotes = int(conn.execute(text(
            "SELECT coalesce(sum(reltuples), 0)::bigint FROM pg_class c "
            "JOIN pg_inherits i ON i.inhrelid = c.oid "
            "WHERE i.inhparent = 'quotes'::regclass")).scalar_one())
    tables = {name: s["total"] for name, s in table_sizes(engine).items()}
    return {"day": day, "end": end.isoformat(), "database": size, "quotes": quotes,
            "tables": tables}


def simulate(db: BenchDatabase, env: dict[str, str], args: argparse.Namespace,
             profile: Profile) -> dict[str, Any]:
    """The simulation: days of ticks, upkeep per day, sizes per day, API times first/last."""
    from api import create_app
    from api.db import release_connections

    upstream = MovingUpstream(args.longrun_coins, args.longrun_tickers).start()
    engine = db.engine
    config = {"RATELIMIT_READS": "100000000/minute", "DATA_CACHE_MAX_BYTES": 0}
    copy, apps = None, []
    try:
        run_env = {**env, **upstream.env(), **profile.env(), "REDIS_URL": redis_env(env)}
        settings = load_settings(run_env)
        apps.append(create_app(config, settings=settings))
        client = apps[0].test_client()
        raw_table = raw_item_table(engine)
        retention = retention_step(engine, settings)
        usage = usage_step(engine)
        compaction = compaction_step(engine)
        days = simulated_days(datetime.now(timezone.utc), args.longrun_days)
        records, api, moved, upkeep_seconds = [], {}, 0, []
        for number, start in enumerate(days, 1):
            for at in tick_times(start, args.longrun_ticks):
                upstream.tick(at)
                with engine.connect() as conn:
                    since = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
                job = run_job(engine, settings)
                if job["status"] != "succeeded":
                    raise RuntimeError(f"day {number} {at}: job {job}")
                if raw_table:
                    moved += move_raw(engine, raw_table, since, at)
            end = start + timedelta(days=1)
            started = time.perf_counter()
            partitions.maintain(engine, now=end)
            if usage is not None:  # beat: maintain, then usage, then expire
                usage(end)
            if retention is not None:
                retention(end)
            if compaction is not None:
                compaction(end)
            upkeep_seconds.append(time.perf_counter() - started)
            records.append(day_record(engine, number, end))
            say(f"longrun: day {number}/{len(days)} ({end:%Y-%m-%d}): database "
                f"{records[-1]['database'] / 1e6:,.0f} MB, {records[-1]['quotes']:,} quotes")
            if number == 1:
                api["in place"] = time_requests(
                    {"day 1": client}, api_paths(engine, args.longrun_ticks),
                    args.longrun_samples)["day 1"]
                copy = snapshot(db, apps[0])
        clients = {"last": client}
        if copy is not None:
            day1 = make_url(db.url).set(database=copy).render_as_string(hide_password=False)
            apps.append(create_app(config, settings=load_settings(
                {**run_env, "DATABASE_URL": day1})))
            clients["day 1"] = apps[1].test_client()
        paths = api_paths(engine, args.longrun_ticks)
        api.update(time_requests(clients, paths, args.longrun_samples))
        returned = page_rows(clients, paths)
        per_row = bytes_per_row(engine)
    finally:
        upstream.stop()
        for app in apps:
            release_connections(app)
        drop_snapshot(db, copy)
    return {"per_row": per_row, "records": records, "api": api, "returned": returned,
            "raw_table": raw_table,
            "raw_moved": moved, "day1_copy": copy is not None,
            "retention": retention is not None, "usage": usage is not None,
            "upkeep_seconds": upkeep_seconds}


ROW_TABLES = ("quotes", "quotes_hourly", "quotes_daily")


def bytes_per_row(engine: Engine, tables: tuple[str, ...] = ROW_TABLES) -> dict[str, float]:
    """Bytes on disk per row (after VACUUM) of each of these tables that holds rows."""
    vacuum(engine)
    sizes = table_sizes(engine)
    out = {}
    with engine.connect() as conn:
        for name in tables:
            if name in sizes:
                rows = int(conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one())
                if rows:
                    out[name] = sizes[name]["total"] / rows
    return out


def growth_per_day(records: list[dict[str, Any]], first: int, last: int) -> float:
    """Mean database bytes added per day from day `first` to day `last` (1-based)."""
    if last <= first:
        return float("nan")
    added = int(records[last - 1]["database"]) - int(records[first - 1]["database"])
    return added / (last - first)


def longrun_cases(db: BenchDatabase, env: dict[str, str], args: argparse.Namespace
                  ) -> tuple[list[Row], dict[str, Any]]:
    """The first and last simulated day's API times; growth early vs late."""
    profile = PROFILES[args.longrun_profile]
    days = max(2, args.longrun_days)
    args.longrun_days = days
    db.truncate_all()
    say(f"longrun: {days} simulated days x {args.longrun_ticks} ticks of "
        f"{args.longrun_coins:,} CoinGecko coins + {args.longrun_tickers:,} CoinPaprika "
        f"tickers, profile {profile.name}")
    sim = simulate(db, env, args, profile)
    records, api = sim["records"], sim["api"]
    rows = []
    # Day 1 from its copy, timed alternating with the last day; without a copy, as timed on
    # day 1 itself (minutes earlier, so the machine's load may differ: said in the row).
    first_day = api.get("day 1") or api["in place"]
    how = ("alternating with a copy of day 1" if "day 1" in api else
           "day 1 timed on day 1 (not alternating)")
    for name in ENDPOINTS:
        first, last = first_day[name], api["last"][name]
        rows.append(Row(f"L. {name} on simulated day {days} vs day 1 (median of "
                        f"{args.longrun_samples}, in process, answer cache off, {how})",
                        f"{last:.1f} ms", f"day 1 {first:.1f} ms", last / first,
                        f"<= {GOAL_API_RATIO}x", last / first <= GOAL_API_RATIO))
    quotes = [r["quotes"] for r in records]
    if days >= 28:
        late, before = max(quotes[-14:]), max(quotes[-28:-14])
        rows.append(Row("L. quotes at full resolution, most on a day of the last 14 vs of the "
                        "14 before", f"{late:,}", f"{before:,}", late / before,
                        "flat once retention starts", 0.9 <= late / before <= 1.1))
    window = max(1, days // 6)
    early = growth_per_day(records, 1, 1 + window)
    late = growth_per_day(records, days - window, days)
    rows.append(Row(f"L. database growth per simulated day, days {days - window}-{days} vs "
                    f"days 1-{1 + window} (profile {profile.name})",
                    f"{late / 1e6:,.1f} MB/day", f"{early / 1e6:,.1f} MB/day", late / early,
                    "flat once retention starts (info)", None))
    raw = (f"raw item blocks moved to simulated time ({sim['raw_moved']:,} rows, bench-only "
           "UPDATE)" if sim["raw_table"] else
           "raw items are raw_records rows on the real clock: raw retention NOT simulated")
    scale = ("real size" if args.longrun_coins >= 17_000 else
             f"SCALED DOWN from 17,000 CoinGecko coins to {args.longrun_coins:,}")
    notes = [
        f"longrun: {days} days x {args.longrun_ticks} ticks, {scale}; {raw}; retention "
        + ("run with now=<simulated day end>" if sim["retention"] else
           "NOT run (no shared.storage.retention in this tree): partitions.maintain only")
        + ("; usage upkeep (counts folded) daily" if sim["usage"] else "; no usage upkeep"),
        "longrun: rows the history pages returned, last day / day 1: " + ", ".join(
            f"{name} {n} / {sim['returned'].get('day 1', {}).get(name, '?')}"
            for name, n in sim["returned"]["last"].items()),
        "longrun: API ms on day 1, timed that day: " + ", ".join(
            f"{k} {v:.1f}" for k, v in api["in place"].items()),
        "longrun: database MB per simulated day: " + ", ".join(
            f"{r['day']}: {r['database'] / 1e6:,.0f}" for r in records),
        "longrun: tables on the last day, MB: " + ", ".join(
            f"{n} {b / 1e6:,.1f}"
            for n, b in sorted(records[-1]["tables"].items(), key=lambda kv: -kv[1])
            if b >= 1e6),
        "longrun: bytes per row on the last day: " + ", ".join(
            f"{n} {b:.0f}" for n, b in sim["per_row"].items()),
        f"longrun: upkeep per day (maintain + retention) median "
        f"{statistics.median(sim['upkeep_seconds']):.2f} s",
    ]
    return rows, {**sim, "profile": profile.name, "notes": notes}
