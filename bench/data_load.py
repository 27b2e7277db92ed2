"""Case 4 of `make bench` (`--cases data`): GET /data under load against /health/live.

The API is served by gunicorn with make run's settings (api/serving/gunicorn_conf.py) and
loaded by bench.http_load; every figure is a ratio against /health/live on the same server,
measured in alternating pairs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import BENCH_DIR, BenchDatabase, Row, only, say, stop_process
from bench.gen import kaggle_file
from bench.runs import big_file, median, run_ingest
from scripts.stack import ROOT, free_port

GUNICORN_CONFIG = "python:api.serving.gunicorn_conf"  # the settings make run and docker compose use


def start_gunicorn(
    env: dict[str, str], workers: int | None, log: Path, app: str = "bench.wsgi:app"
) -> tuple[subprocess.Popen[bytes], int]:
    """gunicorn with make run's settings (api/serving/gunicorn_conf.py) on a free port.

    `workers` overrides the configured count (reported in the notes when it does).
    """
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    override = ["-w", str(workers)] if workers else []
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, app,
             "-b", f"127.0.0.1:{port}", *override],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=2):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    stop_process(proc)
    raise RuntimeError(f"gunicorn did not answer; see {log}")


def get_json(port: int, path: str) -> dict[str, Any]:
    """GET `path` from the server on `port` and parse its JSON body."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def data_cases(db: BenchDatabase, env: dict[str, str], args: argparse.Namespace
               ) -> tuple[list[Row], dict[str, Any]]:
    """Case 4: /data under 64 connections vs a trivial endpoint; misses; first vs deep page.

    The product app answers a repeated /data request from its per-process cache (valid until
    the next publish). So that the cache hides nothing, the same URL is also measured on a
    server with that cache off (every request runs its queries and serialization), and with
    a new filter on every request (nothing cached at all; in alternating pairs with
    /health/live), also with `total=true` (an exact count each time).
    The deep-page comparison runs on the uncached server too: it is about the queries.
    """
    from bench.http_load import run_load, sequential_latency

    data = BENCH_DIR / "data"
    with db.engine.connect() as conn:
        loaded = conn.execute(text("SELECT EXISTS (SELECT 1 FROM quotes)")).scalar_one()
    if not loaded:
        # The data set /data is measured on: the big file (left by the memory or inproc
        # case when they ran) plus the wide one.
        say(f"loading the {args.coins}x{args.days} file for /data")
        run_ingest(env, only(BENCH_DIR / "csv-big", big_file(args)))
    wide = kaggle_file(data / f"kaggle_wide_{args.data_coins}x1.csv", args.data_coins, 1,
                       seed=8, prefix="W")
    say(f"loading {args.data_coins:,} more coins (1 day each) for /data")
    wide_run = run_ingest(env, only(BENCH_DIR / "csv-wide", wide))
    with db.engine.connect() as conn:
        current = int(conn.execute(text("SELECT count(*) FROM current_quotes")).scalar_one())
        quotes = int(conn.execute(text("SELECT count(*) FROM quotes")).scalar_one())
    # The steady state autovacuum reaches a little after a large load, and the checkpointer
    # done writing out the ~1 GB the ingest cases left dirty (else it competes for the cores
    # during the load test: seen as a /data p99 of 65 ms instead of ~40 ms).
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    db.checkpoint()
    listing_path = "/data?page_size=100"
    log = BENCH_DIR / "gunicorn.log"
    gunicorn, port = start_gunicorn(env, args.workers, log)
    try:
        base = f"http://127.0.0.1:{port}"
        run_load(f"{base}{listing_path}", 16, 2)  # warm both workers' pools
        # Alternating pairs, as for ingest: a slow spell of the machine then hits both sides.
        pairs: list[tuple[Any, Any]] = []
        for round_no in range(1, args.rounds + 1):
            say(f"round {round_no}/{args.rounds}: load /health/live, then {listing_path}, "
                f"{args.connections} connections, {args.seconds}s each")
            pairs.append((run_load(f"{base}/health/live", args.connections, args.seconds),
                          run_load(f"{base}{listing_path}", args.connections, args.seconds)))
    finally:
        stop_process(gunicorn)
    # The requests/s row shows the pair with the median ratio of requests/s, the latency row
    # the pair with the median ratio of p99s (each /data run against the /health/live run
    # just before it); every pair is in the notes.
    trivial, listing = median(pairs, key=lambda pair: pair[1].rps / pair[0].rps)
    latency_base, latency = median(pairs, key=lambda pair: pair[1].p99_ms / pair[0].p99_ms)

    gunicorn, port = start_gunicorn(env, args.workers, log, "bench.wsgi:create(cache=False)")
    try:
        base = f"http://127.0.0.1:{port}"
        run_load(f"{base}{listing_path}", 16, 2)
        say(f"load, answer cache off: {listing_path}, {args.connections} connections")
        uncached = run_load(f"{base}{listing_path}", args.connections, args.seconds)
        # since=<a distinct instant before all data>: the same rows, a filter never seen. In
        # alternating pairs with /health/live on this server, as the cached /data above.
        filter_pairs: list[tuple[Any, Any]] = []
        for round_no in range(1, args.rounds + 1):
            say(f"round {round_no}/{args.rounds}: load /health/live, then a new filter per "
                f"request: {listing_path}&since=..., {args.connections} connections")
            filter_pairs.append((
                run_load(f"{base}/health/live", args.connections, args.seconds),
                run_load(f"{base}{listing_path}", args.connections, args.seconds,
                         unique_since=True)))
        filter_base, new_filter = median(filter_pairs, key=lambda pair: pair[1].rps / pair[0].rps)
        say(f"load, a new filter per request with its exact total: {listing_path}&total=true"
            f"&since=..., {args.connections} connections")
        new_filter_total = run_load(f"{base}{listing_path}&total=true", args.connections,
                                    args.seconds, unique_since=True)

        target = int(current * 0.9) if current < 1_000_000 else 900_000
        say(f"deep paging: following next_cursor to row {target:,}")
        cursor, seen = None, 0
        while seen + 500 <= target:
            suffix = f"&cursor={cursor}" if cursor else ""
            page = get_json(port, f"/data?page_size=500{suffix}")
            cursor = page["pagination"].get("next_cursor")
            seen += len(page["data"])
            if not cursor:
                break
        samples = args.latency_samples
        first_page = sequential_latency("127.0.0.1", port, listing_path, samples)
        deep_page = sequential_latency("127.0.0.1", port, f"{listing_path}&cursor={cursor}",
                                       samples) if cursor else []
        offset_page = sequential_latency(
            "127.0.0.1", port, f"{listing_path}&page={seen // 100 + 1}", samples)
    finally:
        stop_process(gunicorn)
    first_ms, offset_ms = median(first_page), median(offset_page)
    deep_ms = median(deep_page) if deep_page else float("nan")
    conns = args.connections
    rows = [
        Row(f"4. /data?page_size=100 under {conns} connections: requests/s "
            f"({current:,} current rows, {quotes:,} quotes)",
            f"{listing.rps:.0f} req/s ({listing.errors} errors)",
            f"/health/live {trivial.rps:.0f} req/s", listing.rps / trivial.rps, ">= 50%",
            listing.rps / trivial.rps >= 0.5 and listing.errors == 0),
        Row(f"4. /data latency under {conns} connections: p99 against /health/live's",
            f"p50 {latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms",
            f"/health/live p50 {latency_base.p50_ms:.1f} ms, p99 {latency_base.p99_ms:.1f} ms "
            f"(same server, median of {len(pairs)} pairs)",
            latency.p99_ms / latency_base.p99_ms, "<= 1.2x /health/live p99",
            latency.p99_ms <= 1.2 * latency_base.p99_ms and latency.errors == 0),
        Row("4. (informational) the same, answer cache off: every request queries and "
            "serializes (no total: not asked for)",
            f"{uncached.rps:.0f} req/s ({uncached.errors} errors), p50 {uncached.p50_ms:.1f} ms,"
            f" p99 {uncached.p99_ms:.1f} ms", f"/health/live {trivial.rps:.0f} req/s",
            uncached.rps / trivial.rps, "none", None),
        Row("4. a new filter on every request (since=<distinct instant>): nothing cached, "
            "the page's rows each time (no total unless asked)",
            f"{new_filter.rps:.0f} req/s ({new_filter.errors} errors), "
            f"p50 {new_filter.p50_ms:.1f} ms, p99 {new_filter.p99_ms:.1f} ms",
            f"/health/live {filter_base.rps:.0f} req/s (same server, median of "
            f"{len(filter_pairs)} pairs)", new_filter.rps / filter_base.rps, ">= 30%",
            new_filter.rps / filter_base.rps >= 0.3 and new_filter.errors == 0),
        Row("4. (informational) the same with `total=true`: rows and an exact count each time",
            f"{new_filter_total.rps:.0f} req/s ({new_filter_total.errors} errors), "
            f"p50 {new_filter_total.p50_ms:.1f} ms, p99 {new_filter_total.p99_ms:.1f} ms",
            f"/health/live {trivial.rps:.0f} req/s", new_filter_total.rps / trivial.rps,
            "none", None),
        Row(f"4. deep page: cursor page at row {seen:,} vs first page (one connection, p50, "
            f"answer cache off)", f"{deep_ms:.1f} ms", f"first page {first_ms:.1f} ms",
            deep_ms / first_ms, "<= 1.5x", deep_ms / first_ms <= 1.5 if deep_page else None),
        Row(f"4. (for comparison) offset page at row {seen:,} vs first page",
            f"{offset_ms:.1f} ms", f"first page {first_ms:.1f} ms", offset_ms / first_ms,
            "none (cursor paging is the deep path)", None),
    ]
    from api.serving import gunicorn_conf

    facts = {"wide_run": wide_run, "current_rows": current, "quotes": quotes,
             "trivial": vars(trivial), "data": vars(listing), "data_uncached": vars(uncached),
             "load_rounds": [{"trivial": vars(t), "data": vars(d)} for t, d in pairs],
             "data_new_filter": vars(new_filter),
             "new_filter_rounds": [{"trivial": vars(t), "data": vars(d)} for t, d in filter_pairs],
             "data_new_filter_total": vars(new_filter_total), "deep_row": seen,
             "first_page_ms": first_ms, "deep_page_ms": deep_ms, "offset_page_ms": offset_ms,
             "tool": listing.tool, "workers": args.workers or gunicorn_conf.workers,
             "worker_class": gunicorn_conf.worker_class,
             "workers_overridden": bool(args.workers)}
    return rows, facts


def data_notes(facts: dict[str, Any] | None) -> list[str]:
    """The notes of case 4: every round, the load tool and gunicorn setup, the data set."""
    if not facts:
        return []
    d = facts
    setup = ("OVERRIDDEN with --workers, not as make run" if d["workers_overridden"]
             else "api/serving/gunicorn_conf.py, as make run")
    return [
        "/data rounds (/health/live vs /data req/s; p99 /health/live vs /data): " + "; ".join(
            f"{r['trivial']['rps']:.0f} vs {r['data']['rps']:.0f}; "
            f"{r['trivial']['p99_ms']:.1f} vs {r['data']['p99_ms']:.1f} ms"
            for r in d["load_rounds"]),
        "new filter per request, rounds (/health/live vs /data req/s, answer cache off): "
        + "; ".join(f"{r['trivial']['rps']:.0f} vs {r['data']['rps']:.0f}"
                    for r in d["new_filter_rounds"]),
        f"load tool: {d['tool']}; gunicorn {d['worker_class']} x {d['workers']} ({setup}); "
        "bench.wsgi lifts only the per-client read quota",
        f"/data data set: {d['current_rows']:,} current rows, {d['quotes']:,} quotes; the extra "
        f"coins took {d['wide_run']['seconds']:.1f} s to load",
    ]
