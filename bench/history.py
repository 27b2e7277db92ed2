"""Bench cases 6-7: candles over 1M quotes vs a history page, and the export of 1M rows.

The quotes are generated in SQL (one asset, one source, a quote every 30 s: 1,000,000 quotes
over 347 days, inside the 366-day range cap). Requests go through the product app in
process (the test client, read quota lifted); each export runs in a child process of its own
so that its peak RSS (ru_maxrss) is the export's, and is compared with a 10k-row export. The
baseline of the export's speed is a bare `COPY (the export's query) TO STDOUT` (CSV) read
by psycopg2 into a sink that drops it.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import text

from bench.common import BenchDatabase, Row, say
from shared.storage.partitions import QUOTES as QUOTES_TABLE, ensure
from scripts.stack import ROOT

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
STEP_SECONDS = 30
QUOTES = 1_000_000
SMALL = 10_000
HISTORY_URL = "/data/1/history?source=coingecko&since={since}&until={until}"
CANDLES_URL = ("/data/1/candles?source=coingecko&interval={interval}&since={since}"
               "&until={until}&page_size=50")

_COPY_SQL = """COPY (
SELECT q.asset_id, q.source, q.source_asset_id, q.observed_at, CAST(q.price_usd AS text),
       CAST(q.market_cap_usd AS text), CAST(q.volume_24h_usd AS text),
       CAST(q.circulating_supply AS text), CAST(q.total_supply AS text),
       CAST(q.max_supply AS text), q.rank, CAST(q.open_usd AS text), CAST(q.high_usd AS text),
       CAST(q.low_usd AS text), CAST(q.close_usd AS text), q.run_id,
       CASE WHEN q.flag_set IS NOT NULL
            THEN (SELECT s.kinds FROM flag_sets s WHERE s.id = q.flag_set) END, f.flags
FROM quotes q LEFT JOIN quote_flags f
  ON f.asset_id = q.asset_id AND f.source = q.source AND f.observed_at = q.observed_at
WHERE q.asset_id = 1 AND q.source = 'coingecko'
  AND q.observed_at >= '{since}' AND q.observed_at <= '{until}'
ORDER BY q.observed_at DESC, q.source DESC) TO STDOUT WITH (FORMAT csv, HEADER)"""


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _range(rows: int) -> tuple[str, str]:
    """since/until covering the newest `rows` quotes."""
    last = T0 + timedelta(seconds=STEP_SECONDS * (QUOTES - 1))
    return _iso(last - timedelta(seconds=STEP_SECONDS * (rows - 1))), _iso(last)


def fill(db: BenchDatabase) -> float:
    """1M quotes of one asset at one source; seconds taken."""
    started = time.perf_counter()
    # The partitions a loader would make first (shared.storage.partitions).
    ensure(db.engine, QUOTES_TABLE, [(T0, T0 + timedelta(seconds=STEP_SECONDS * QUOTES))])
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO assets (id, slug, symbol, name) "
                          "VALUES (1, 'benchcoin', 'BNC', 'Bench Coin') ON CONFLICT DO NOTHING"))
        conn.execute(text("""
            INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd,
                                market_cap_usd, volume_24h_usd)
            SELECT 1, 'coingecko', :t0 + i * interval '30 seconds', 'benchcoin',
                   round(CAST(30000 + 1000 * sin(i / 997.0) AS numeric), 8),
                   round(CAST(6e11 + 1e9 * sin(i / 991.0) AS numeric), 2),
                   round(CAST(2e10 + 1e8 * cos(i / 983.0) AS numeric), 2)
            FROM generate_series(0, :n - 1) AS i"""), {"t0": T0, "n": QUOTES})
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE quotes"))
    return time.perf_counter() - started


def _median_ms(client: Any, url: str, rounds: int = 15) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return statistics.median(times)


def explain_candles(db: BenchDatabase, since: str, until: str) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the first page of hourly candles."""
    from shared.queries.candles import _CANDLES_SQL

    low = datetime.fromisoformat(since.replace("Z", "+00:00"))
    params = {"step": "3600 seconds", "asset_id": 1, "source": "coingecko", "low": low,
              "high": low + timedelta(hours=50), "since": low,
              "until": datetime.fromisoformat(until.replace("Z", "+00:00"))}
    with db.engine.connect() as conn:
        plan = conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + _CANDLES_SQL.text), params)
        return "\n".join(row[0] for row in plan)


def export_child(url: str) -> None:
    """In a child process: stream one export through the app; print rows, seconds, peak RSS."""
    from bench.wsgi import create

    client = create().test_client()
    started = time.perf_counter()
    response = client.get(url, buffered=False)
    size = lines = 0
    for chunk in response.response:
        size += len(chunk)
        lines += chunk.count(b"\n")
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": lines - 1, "bytes": size, "seconds": seconds,
                      "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def _export(env: dict[str, str], url: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.history", url], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _copy_seconds(db: BenchDatabase, since: str, until: str) -> float:
    class Sink:
        def write(self, data: Any) -> int:
            return len(data)

    raw = db.engine.raw_connection()
    try:
        started = time.perf_counter()
        raw.cursor().copy_expert(_COPY_SQL.format(since=since, until=until), Sink())
        return time.perf_counter() - started
    finally:
        raw.close()


def history_cases(db: BenchDatabase, env: dict[str, str], args: argparse.Namespace
                  ) -> tuple[list[Row], dict[str, Any]]:
    """Cases 6 and 7 (see the module docstring)."""
    db.truncate_all()
    say(f"generating {QUOTES:,} quotes for candles and export")
    fill_seconds = fill(db)
    from api import create_app
    from shared.config import load_settings

    client = create_app({"RATELIMIT_READS": "100000000/minute"},
                        settings=load_settings(env)).test_client()
    since, until = _range(QUOTES)
    history_ms = _median_ms(client, HISTORY_URL.format(since=since, until=until)
                            + "&page_size=50")
    hourly_ms = _median_ms(client, CANDLES_URL.format(interval="1h", since=since, until=until))
    daily_ms = _median_ms(client, CANDLES_URL.format(interval="1d", since=since, until=until),
                          rounds=5)
    plan = explain_candles(db, since, until)
    say("exporting 10k and 1M rows (CSV, NDJSON) in child processes")
    small = _export(env, HISTORY_URL.format(since=_range(SMALL)[0], until=until) + "&format=csv")
    big = _export(env, HISTORY_URL.format(since=since, until=until) + "&format=csv")
    ndjson = _export(env, HISTORY_URL.format(since=since, until=until) + "&format=ndjson")
    copy_seconds = _copy_seconds(db, since, until)
    assert big["rows"] == QUOTES and small["rows"] == SMALL, (big, small)
    export_rps, copy_rps = big["rows"] / big["seconds"], QUOTES / copy_seconds
    rows = [
        Row("6. candles 1h, first page (50 buckets of 1M quotes)", f"{hourly_ms:.1f} ms",
            f"{history_ms:.1f} ms history page", hourly_ms / history_ms,
            "same order as a history page", hourly_ms <= 3 * history_ms),
        Row("6. candles 1d, first page (50 days = 144k quotes)", f"{daily_ms:.1f} ms",
            f"{history_ms:.1f} ms history page", daily_ms / history_ms, "reads only its range",
            None),
        Row("7. export 1M rows CSV (rows/s)", f"{export_rps:,.0f}",
            f"{copy_rps:,.0f} bare COPY TO STDOUT", export_rps / copy_rps, "n/a", None),
        Row("7. export peak RSS 1M vs 10k rows", f"{big['maxrss_kb'] / 1024:.0f} MB",
            f"{small['maxrss_kb'] / 1024:.0f} MB", big["maxrss_kb"] / small["maxrss_kb"],
            "flat (< 1.2x)", big["maxrss_kb"] < 1.2 * small["maxrss_kb"]),
    ]
    facts = {"fill_seconds": fill_seconds, "plan": plan, "small": small, "big": big,
             "ndjson": ndjson, "copy_seconds": copy_seconds, "history_ms": history_ms,
             "hourly_ms": hourly_ms, "daily_ms": daily_ms}
    return rows, facts


def history_notes(facts: dict[str, Any] | None) -> list[str]:
    """Notes under the table: the candle plan's access path, NDJSON speed, the sizes."""
    if not facts:
        return []
    access = [line.strip() for line in facts["plan"].splitlines()
              if "Scan" in line or "Index Cond" in line or "Execution Time" in line]
    nd = facts["ndjson"]
    return [
        "candles (case 6), first hourly page: " + "; ".join(access),
        f"export (case 7): CSV 1M rows {facts['big']['bytes'] / 1e6:.0f} MB in "
        f"{facts['big']['seconds']:.1f} s, NDJSON {nd['rows'] / nd['seconds']:,.0f} rows/s "
        f"(peak RSS {nd['maxrss_kb'] / 1024:.0f} MB), bare COPY {facts['copy_seconds']:.1f} s; "
        f"fill {facts['fill_seconds']:.0f} s",
    ]


if __name__ == "__main__":
    export_child(sys.argv[1])
