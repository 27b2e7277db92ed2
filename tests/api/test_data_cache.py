"""GET /data's per-process answer cache: invalidated by every publish, byte-identical answers."""
from __future__ import annotations

import json
import select
import time
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, text

from api.http.answer_cache import VersionedCache
from shared.config import Settings
from tests.api.helpers import coins_csv, without_dynamic
from tests.helpers.csv_runs import HEADER, only_file, run_csv


def _version(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT version FROM data_version")).scalar_one())


def notified(client: Any, timeout: float = 5.0) -> bool:
    """Wait until the app's data-version connection has a notification to read."""
    listener = client.application.extensions["db_version_watch"].listener
    return bool(select.select([listener], [], [], timeout)[0])


def test_the_next_request_after_a_publish_reads_the_new_data(
    clean_db: Engine, client: Any, settings: Settings, csv_dir: Path, monkeypatch: Any
) -> None:
    # The notification alone must carry the news: no periodic read within this test.
    monkeypatch.setattr("api.db.VERSION_RECHECK_SECONDS", 3600.0)
    path = only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 30, symbol_prefix="K"))
    run_csv(clean_db, settings)
    url = "/data?page_size=10&sort=-price_usd&total=true"
    before = client.get(url).get_json()
    assert client.get(url).get_json()["data"] == before["data"]  # served from the cache
    assert len(client.application.extensions["data_cache"]) >= 1
    version = _version(clean_db)

    # A new day for every coin, with higher prices, and five new coins.
    with path.open("a") as handle:
        handle.write(coins_csv(1, 30, symbol_prefix="K", day=2, price_prefix="7."))
        handle.write(coins_csv(100, 5, symbol_prefix="N", day=2, price_prefix="9."))
    assert run_csv(clean_db, settings)["status"] == "succeeded"
    assert _version(clean_db) != version
    assert notified(client)

    after = client.get(url).get_json()
    assert after["pagination"]["total"] == 35 == before["pagination"]["total"] + 5
    assert [r["symbol"] for r in after["data"][:5]] == [f"N{i}" for i in range(104, 99, -1)]
    assert {r["observed_at"][:10] for r in after["data"]} == {"2021-01-02"}
    with clean_db.connect() as conn:
        newest = conn.execute(text(
            "SELECT max(price_usd)::text FROM current_quotes")).scalar_one()
    assert after["data"][0]["price_usd"] == newest


def test_a_run_that_publishes_nothing_new_leaves_answers_alone(
    clean_db: Engine, client: Any, settings: Settings, csv_dir: Path
) -> None:
    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 5))
    run_csv(clean_db, settings)
    version = _version(clean_db)
    first = client.get("/data").get_json()
    assert run_csv(clean_db, settings)["inserted"] == 0  # nothing new: nothing published
    assert _version(clean_db) == version
    assert client.get("/data").get_json()["data"] == first["data"]


def test_totals_are_exact_per_filter_set_and_follow_publishes(
    clean_db: Engine, client: Any, settings: Settings, csv_dir: Path
) -> None:
    path = only_file(csv_dir, "coins.csv",
                     HEADER + coins_csv(1, 12, symbol_prefix="A") + coins_csv(50, 8, "B"))
    run_csv(clean_db, settings)
    filters = {"": "TRUE", "q=B": "symbol ILIKE '%B%' OR name ILIKE '%B%'",
               "symbol=a3": "symbol = 'A3'", "source=csv": "source = 'csv'",
               "source=coingecko": "source = 'coingecko'"}

    def check() -> None:
        for query, where in filters.items():
            for page in ("", "&page=2&page_size=3"):
                total = client.get(f"/data?{query}{page}&total=true").get_json()[
                    "pagination"]["total"]
                with clean_db.connect() as conn:
                    expected = conn.execute(text(
                        f"SELECT count(*) FROM current_quotes WHERE {where}")).scalar_one()
                assert total == expected, (query, page)

    check()
    with path.open("a") as handle:
        handle.write(coins_csv(200, 4, symbol_prefix="B", day=3))
    run_csv(clean_db, settings)
    check()
    # Any write to current_quotes moves the version, even outside the pipeline.
    with clean_db.begin() as conn:
        conn.execute(text("DELETE FROM current_quotes WHERE symbol LIKE 'B%'"))
    check()


def test_the_version_moves_at_commit_and_never_repeats(clean_db: Engine,
                                                       settings: Settings,
                                                       csv_dir: Path) -> None:
    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 3))
    run_csv(clean_db, settings)
    seen = {_version(clean_db)}
    with clean_db.connect() as writer:
        transaction = writer.begin()
        writer.execute(text("UPDATE current_quotes SET rank = 1"))
        assert _version(clean_db) in seen  # not visible before the commit
        transaction.commit()
        seen.add(_version(clean_db))
        assert len(seen) == 2
        transaction = writer.begin()
        writer.execute(text("UPDATE current_quotes SET rank = 2"))
        transaction.rollback()
        assert _version(clean_db) in seen
    with clean_db.begin() as conn:
        conn.execute(text("TRUNCATE current_quotes"))
    seen.add(_version(clean_db))
    assert len(seen) == 3
    with clean_db.begin() as conn:
        conn.execute(text("DELETE FROM data_version"))
    with clean_db.begin() as conn:  # the row comes back, with a value never used before
        conn.execute(text("TRUNCATE current_quotes"))
    assert _version(clean_db) not in seen


def test_notifications_carry_each_committed_version_and_nothing_else(
    clean_db: Engine, app: Any, settings: Settings, csv_dir: Path, monkeypatch: Any
) -> None:
    from api.db import current_data_version

    monkeypatch.setattr("api.db.VERSION_RECHECK_SECONDS", 3600.0)
    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 3))
    run_csv(clean_db, settings)
    client = app.test_client()
    with app.app_context():
        assert current_data_version() == _version(clean_db)
        with clean_db.connect() as writer:
            transaction = writer.begin()
            writer.execute(text("UPDATE current_quotes SET rank = 1"))
            writer.execute(text("UPDATE current_quotes SET rank = 2"))
            transaction.commit()  # two bumps: the last one is the committed version
            assert notified(client)
            assert current_data_version() == _version(clean_db)
            before = _version(clean_db)
            transaction = writer.begin()
            writer.execute(text("UPDATE current_quotes SET rank = 3"))
            transaction.rollback()  # no commit, no notification
            assert not notified(client, timeout=0.5)
            assert current_data_version() == before


def test_a_missed_notification_is_caught_up_by_the_periodic_read(
    clean_db: Engine, app: Any, settings: Settings, csv_dir: Path, monkeypatch: Any
) -> None:
    from api.db import current_data_version

    monkeypatch.setattr("api.db.VERSION_RECHECK_SECONDS", 2.0)
    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 3))
    run_csv(clean_db, settings)
    with app.app_context():
        first = current_data_version()
        watch = app.extensions["db_version_watch"]
        with watch.listener.cursor() as cursor:  # the server stops telling this process
            cursor.execute("UNLISTEN data_version")
        with clean_db.begin() as conn:
            conn.execute(text("UPDATE current_quotes SET rank = 7"))
        assert current_data_version() == first  # not told, and the last read is recent
        time.sleep(2.05)
        assert current_data_version() == _version(clean_db) != first


def test_a_dropped_version_connection_is_replaced(
    clean_db: Engine, client: Any, settings: Settings, csv_dir: Path
) -> None:
    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 3))
    run_csv(clean_db, settings)
    assert client.get("/data").status_code == 200
    with clean_db.connect() as conn:
        killed = conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE '%data_version_read%' "
            "AND pid <> pg_backend_pid()")).scalar_one()
    assert killed >= 1
    response = client.get("/data?total=true")
    assert response.status_code == 200 and response.get_json()["pagination"]["total"] == 3


def test_without_the_answer_cache_answers_are_the_same(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    from api import create_app

    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 25))
    run_csv(clean_db, settings)
    cached = create_app({"TESTING": True}, settings=settings).test_client()
    uncached_app = create_app({"TESTING": True, "DATA_CACHE_MAX_BYTES": 0}, settings=settings)
    assert uncached_app.extensions["data_cache"] is None
    uncached = uncached_app.test_client()
    for url in ("/data?page_size=7", "/data?sort=-symbol&page=3&page_size=4"):
        for _ in range(2):
            assert (without_dynamic(cached.get(url).data)
                    == without_dynamic(uncached.get(url).data))


def test_invalid_arguments_are_never_served_from_the_cache(
    clean_db: Engine, client: Any, settings: Settings, csv_dir: Path
) -> None:
    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 3))
    run_csv(clean_db, settings)
    for _ in range(2):
        assert client.get("/data?page_size=0").status_code == 422
        assert client.get("/data?cursor=bogus").status_code == 422
    assert all(b"page_size=0" not in key and b"bogus" not in key
               for key in client.application.extensions["data_cache"]._entries)


def test_versioned_cache_is_a_bounded_lru_of_one_version() -> None:
    cache = VersionedCache(max_bytes=400)
    cache.put(1, "a", "A", 100)
    cache.put(1, "b", "B", 100)
    assert cache.get(1, "a") == "A"  # now most recent
    cache.put(1, "c", "C", 100)
    cache.put(1, "d", "D", 100)
    cache.put(1, "e", "E", 100)  # over 400 bytes: the least recently used (b) goes
    assert cache.get(1, "b") is None and cache.get(1, "a") == "A"
    assert cache.get(2, "a") is None and cache.get(None, "a") is None
    cache.put(2, "a", "A2", 100)  # a newer version drops everything older
    assert len(cache) == 1 and cache.get(1, "c") is None and cache.get(2, "a") == "A2"
    cache.put(2, "huge", "H", 101)  # more than a quarter of the budget: not kept
    assert cache.get(2, "huge") is None


def test_read_quota_headers_and_a_flushed_script_cache(clean_db: Engine, settings: Settings,
                                                       redis_url: str) -> None:
    from api import create_app

    client = create_app({"TESTING": True, "RATELIMIT_READS": "3/minute"},
                        settings=settings).test_client()
    remaining = []
    for _ in range(3):
        response = client.get("/data")
        assert response.status_code == 200
        remaining.append(response.headers["X-RateLimit-Remaining"])
        assert int(response.headers["X-RateLimit-Reset"]) > 0
    assert remaining == ["2", "1", "0"]
    # Redis forgot its scripts (a restart): the limiter loads it again.
    redis.Redis.from_url(redis_url).script_flush()
    limited = client.get("/stats")
    assert limited.status_code == 429
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert json.loads(limited.data)["message"].startswith("rate limit exceeded (3 per 1 minute)")
