"""Retention in other processes: beat's maintenance task in a real worker folds and drops, and
a run killed (kill -9) in the middle of a partition's expiry loses nothing, the next run
finishing it."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import Engine, text

from shared import task_names
from shared.config import Settings
from shared.queries.candles import INTERVALS, CandleRange, candle_rows, floor_bucket
from shared.storage.partitions import KNOWN, QUOTES, maintain, unit
from shared.storage.retention import expire
from tests.conftest import ROOT, WorkerProcess
from tests.helpers.broker import sender
from tests.helpers.partitions import drop_expirable_partitions, ensure_quote_partitions
from tests.helpers.waiting import poll

# Starts a maintenance process in a fresh interpreter: not in the fast subset.
pytestmark = pytest.mark.processes

UTC = timezone.utc
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
START = floor_bucket(NOW - timedelta(days=60), timedelta(days=1))
KEYS = [(1, "coingecko"), (2, "csv")]
# One maintenance run as beat's task runs it, with QUOTES_FULL_RESOLUTION_DAYS from the env.
_EXPIRE = """
from sqlalchemy import create_engine
from shared.config import load_settings
from shared.storage.retention import expire
settings = load_settings()
expire(create_engine(settings.database_url), settings)
"""
_DETACHING = text(
    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
    "AND query LIKE 'ALTER TABLE \"quotes\" DETACH PARTITION%'")
_PART = text("""
SELECT c.relname, c.relispartition, coalesce(i.inhdetachpending, false)
FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
WHERE c.relkind = 'r' AND c.relname ~ '^quotes_p[0-9]{8}_[0-9]{8}$'
  AND substr(split_part(c.relname, '_', 2), 2) <= :day AND split_part(c.relname, '_', 3) > :day
""")


def _rows(engine: Engine, query: Any, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(query, params).all())


def _hourly_candles(engine: Engine) -> dict[Any, list[dict[str, Any]]]:
    step, end = INTERVALS["1h"], START + timedelta(days=1)
    with engine.connect() as conn:
        return {key: [{k: v for k, v in c.items()
                       if k not in ("bucket_end", "volume", "resolution")}
                      for c in candle_rows(conn, CandleRange(*key, step, START, end, START, 24),
                                           START, end)]
                for key in KEYS}


def _rollups(engine: Engine) -> dict[Any, list[dict[str, Any]]]:
    with engine.connect() as conn:
        found = {}
        for asset, source in KEYS:
            rows = conn.execute(text(
                "SELECT bucket_start, open_usd, high_usd, low_usd, close_usd, quotes, "
                "first_observed_at, last_observed_at FROM quotes_hourly WHERE asset_id = :a "
                "AND source = :s AND bucket_start >= :lo AND bucket_start < :hi "
                "ORDER BY bucket_start"), {"a": asset, "s": source, "lo": START,
                                           "hi": START + timedelta(days=1)})
            found[(asset, source)] = [{
                "bucket_start": b.isoformat(), "open": str(o), "high": str(h), "low": str(lo),
                "close": str(c), "quotes": n, "first_observed_at": f.isoformat(),
                "last_observed_at": la.isoformat()} for b, o, h, lo, c, n, f, la in rows]
        return found


@pytest.fixture
def old_quotes(clean_db: Engine) -> Iterator[Engine]:
    """A day of quotes every 10 minutes, 60 days back, in the oldest partition (older empty
    ones other tests left are dropped, so the run expires this one first); horizons and
    rollups emptied after."""
    drop_expirable_partitions(clean_db, unit(QUOTES, START, NOW)[0])
    ensure_quote_partitions(clean_db, START, START + timedelta(days=1))
    with clean_db.begin() as conn:
        for asset, source in KEYS:
            conn.execute(text(
                "INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd) "
                "SELECT :a, :s, :t + n * interval '10 minutes', 'x', 100 + (n * 37) % 23 "
                "FROM generate_series(0, 143) n"), {"a": asset, "s": source, "t": START})
    yield clean_db
    with clean_db.begin() as conn:
        conn.execute(text("TRUNCATE retention_horizons, rollup_folds, quotes_hourly, "
                          "quotes_daily"))
    KNOWN.forget()
    maintain(clean_db)


def test_kill_9_while_detaching_loses_nothing_and_the_next_run_finishes(
        old_quotes: Engine, base_env: dict[str, str], settings: Settings) -> None:
    before = _hourly_candles(old_quotes)
    assert all(len(rows) == 24 for rows in before.values())
    day = START.strftime("%Y%m%d")
    holder = old_quotes.connect()
    # An open transaction that read the quotes: DETACH ... CONCURRENTLY waits for it.
    holder.execute(text("SELECT count(*) FROM quotes WHERE observed_at >= :t"), {"t": START})
    env = {**os.environ, **base_env, "PYTHONPATH": str(ROOT), "QUOTES_FULL_RESOLUTION_DAYS": "30"}
    proc = subprocess.Popen([sys.executable, "-c", _EXPIRE], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        (backend,), = poll(lambda: _rows(old_quotes, _DETACHING),
                           lambda rows: len(rows) == 1, 60, "maintenance in its DETACH")
        # Folded (committed) before the detach: the rollup is there, the rows too.
        assert _rollups(old_quotes) == before
        proc.kill()  # SIGKILL
        proc.wait(10)
        with old_quotes.connect() as conn:  # its server process dies with it, mid-detach
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend})
    finally:
        holder.rollback()
        holder.close()
        if proc.poll() is None:
            proc.kill()
    poll(lambda: _rows(old_quotes, text("SELECT 1 FROM pg_stat_activity WHERE pid = :p"),
                       p=backend), lambda rows: rows == [], 60, "the killed backend gone")

    # Nothing lost: the partition (pending detach) still holds every row, and the rollup too.
    with old_quotes.connect() as conn:
        (name, attached, pending), = conn.execute(_PART, {"day": day}).all()
        assert attached and pending, name
        assert conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one() == 288
    assert _rollups(old_quotes) == before

    # The next run (in-process here) finishes the detach, folds again, drops the table.
    expire(old_quotes, dataclasses.replace(settings, quotes_full_resolution_days=30), NOW)
    with old_quotes.connect() as conn:
        assert conn.execute(_PART, {"day": day}).all() == []
        assert conn.execute(text("SELECT count(*) FROM rollup_folds")).scalar_one() == 0
    assert _rollups(old_quotes) == before


@pytest.mark.e2e
def test_beats_maintenance_task_expires_with_the_workers_settings(
        old_quotes: Engine, settings: Settings,
        worker_factory: Callable[..., WorkerProcess]) -> None:
    before = _hourly_candles(old_quotes)
    day = START.strftime("%Y%m%d")
    assert _rows(old_quotes, _PART, day=day)  # the partition is there before the task
    worker_factory({"QUOTES_FULL_RESOLUTION_DAYS": "30", "QUOTES_HOURLY_DAYS": "400"})
    sender(settings).send_task(task_names.MAINTAIN_PARTITIONS)
    poll(lambda: _rows(old_quotes, _PART, day=day), lambda rows: rows == [], 60,
         "the expired partition dropped by the task")
    assert _rollups(old_quotes) == before
    assert _rows(old_quotes, text("SELECT name FROM retention_horizons")) == [("quotes",)]
