"""Backfill execution in process, on real PostgreSQL, Redis and the replay upstream."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Engine, text

from shared.backfill.request import BackfillRequest, backfill_progress, create_backfill
from shared.backfill.run import execute_backfill
from shared.db import unit_of_work
from shared.locks import run_lock, try_lock, unlock
from shared.sources.rate_limit import RedisRateLimiter
from tests.api.helpers import replay_settings, run_sources
from tests.conftest import count
from tests.upstream import ReplayUpstream

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def test_backfill_writes_chunks_once_and_resubmission_makes_no_duplicate(
    clean_db: Engine, base_env: dict[str, str], csv_dir: Path, upstream: ReplayUpstream,
) -> None:
    settings = replay_settings(base_env, csv_dir, upstream, BACKFILL_MAX_DAYS="400",
                               BACKFILL_CHUNK_DAYS="30")
    for source in ("coingecko", "coingecko-backfill"):
        RedisRateLimiter(settings.redis_url, source, settings.coingecko_rate).clear()
    run_sources(clean_db, settings, ["coingecko"])
    req = BackfillRequest(source="coingecko", assets=["bitcoin", "ethereum"],
                          since=NOW - timedelta(days=60), until=NOW)
    with unit_of_work(clean_db) as session:
        backfill, created = create_backfill(session, req, settings, now=NOW)
        backfill_id = backfill.id
    assert created
    before = len(upstream.requests())
    assert execute_backfill(backfill_id, settings, clean_db) == "succeeded"
    calls = upstream.requests()[before:]
    # 60 days in 30-day chunks: 2 windows per coin (the second starts 1 s after the first).
    with unit_of_work(clean_db) as session:
        progress = backfill_progress(session, backfill_id)
    assert progress is not None
    chunks = progress["chunks"]
    assert len(calls) == len(chunks) == 2 * 2
    assert all("/market_chart/range" in c["path"] for c in calls)
    assert progress["chunk_counts"]["done"] == len(chunks)
    where = "source = 'coingecko' AND run_id = :run"
    stored = count(clean_db, "quotes", where, run=progress["run_id"])
    assert stored == progress["inserted"] == progress["points"]
    # Hourly points over 60 days for two coins, each hour exactly once.
    assert stored == 2 * (60 * 24 + 1)
    with clean_db.connect() as conn:
        gaps = conn.execute(text(
            "SELECT count(*) FROM (SELECT observed_at - lag(observed_at) OVER "
            "(PARTITION BY asset_id ORDER BY observed_at) AS step FROM quotes "
            f"WHERE {where}) s WHERE step <> interval '1 hour'"),
            {"run": progress["run_id"]}).scalar()
        raw = conn.execute(text("SELECT count(*) FROM raw_items WHERE source_key LIKE "
                                "'market_chart:%'")).scalar()
    assert gaps == 0
    assert raw == len(chunks)
    # The same request again: the same backfill, nothing more to fetch or write.
    with unit_of_work(clean_db) as session:
        again, created = create_backfill(session, req, settings, now=NOW)
    assert again.id == backfill_id and not created
    assert execute_backfill(backfill_id, settings, clean_db) == "succeeded"
    assert len(upstream.requests()) == before + len(calls)
    assert count(clean_db, "quotes", where, run=progress["run_id"]) == stored


def test_budget_wait_and_an_interrupted_chunk(
    clean_db: Engine, base_env: dict[str, str], csv_dir: Path, upstream: ReplayUpstream,
) -> None:
    settings = replay_settings(base_env, csv_dir, upstream, BACKFILL_CHUNK_DAYS="10")
    for source in ("coingecko", "coingecko-backfill"):
        RedisRateLimiter(settings.redis_url, source, settings.coingecko_rate).clear()
    run_sources(clean_db, settings, ["coingecko"])
    req = BackfillRequest(source="coingecko", assets=["bitcoin"],
                          since=NOW - timedelta(days=30), until=NOW)
    with unit_of_work(clean_db) as session:
        backfill, _ = create_backfill(session, req, settings, now=NOW)
        backfill_id = backfill.id

    def states() -> list[tuple[str, int]]:
        with clean_db.connect() as conn:
            return [(s, a) for s, a in conn.execute(text(
                "SELECT status, attempts FROM backfill_chunks WHERE backfill_id = :id "
                "ORDER BY id"), {"id": backfill_id})]

    # Another backfill of the source holds its lock: this one waits, touching nothing.
    with clean_db.connect() as other:
        assert try_lock(other, run_lock("backfill", "coingecko"))
        assert execute_backfill(backfill_id, settings, clean_db) == "wait"
        unlock(other, run_lock("backfill", "coingecko"))
    assert states() == [("pending", 0)] * 3
    # A spent budget still does one chunk, then asks to be sent again.
    assert execute_backfill(backfill_id, settings, clean_db, budget_seconds=0) == "more"
    assert states() == [("done", 1), ("pending", 0), ("pending", 0)]
    # A worker killed mid-chunk leaves it running with nothing written: it runs again.
    with clean_db.begin() as conn:
        conn.execute(text("UPDATE backfill_chunks SET status = 'running', attempts = 1 "
                          "WHERE backfill_id = :id AND status = 'pending' AND id = "
                          "(SELECT min(id) FROM backfill_chunks WHERE backfill_id = :id "
                          "AND status = 'pending')"), {"id": backfill_id})
    assert execute_backfill(backfill_id, settings, clean_db) == "succeeded"
    assert states() == [("done", 1), ("done", 2), ("done", 1)]
    with clean_db.connect() as conn:
        run = conn.execute(text("SELECT r.status, r.source, r.kind FROM runs r JOIN backfills b "
                                "ON b.run_id = r.id WHERE b.id = :id"),
                           {"id": backfill_id}).one()
    assert tuple(run) == ("succeeded", "coingecko", "backfill")
