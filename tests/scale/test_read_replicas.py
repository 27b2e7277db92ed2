"""Read replicas: GET /data served by a streaming replica within the lag bound, the primary else.

One primary and one replica (pg_basebackup -R) per module, on loopback ports; the API built
on them in-process and hammered by threads. The cases: reads seen on the replica (its
pg_stat_activity and server log) and none on the primary; replay paused past the bound ->
reads on the primary, and the answer cache never holds a replica's older answer under the
primary's newer version; the replica crashed under load -> no read fails, and it is used
again once back; POST /jobs then GET /jobs/<id> with the replica's replay paused -> never 404.
"""
from __future__ import annotations

import itertools
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from flask import Flask
from sqlalchemy import Engine

from api.db import current_data_version
from api.replicas import APPLICATION_NAME
from shared.config import Settings
from tests.conftest import TEST_TOKEN
from tests.scale.conftest import PRIMARY_APP, Load, publish, scale_settings
from tests.scale.postgres import DATABASE, Cluster, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.processes]

_FRESH = itertools.count(1)
ACTIVE_READS = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND state = 'active' AND query ILIKE '%%current_quotes%%'")


@pytest.fixture(scope="module")
def seeded(cluster: Cluster, primary_engine: Engine, redis_url: str, scale_csv: Path,
           broker_prefix: str) -> Settings:
    """Day 1 of every coin published on the primary and replayed by the replica."""
    settings = scale_settings(cluster.primary.url(), redis_url, scale_csv, broker_prefix)
    publish(primary_engine, settings, scale_csv, day=2, price="1.")
    cluster.wait_caught_up()
    return settings


def api_settings(cluster: Cluster, seeded: Settings, max_lag: float) -> Settings:
    """The API's settings: the primary (named in its logs) and the replica for reads."""
    return scale_settings(
        cluster.primary.url(application_name=PRIMARY_APP), seeded.redis_url, seeded.csv_dir,
        seeded.broker_key_prefix, DATABASE_READ_URLS=cluster.replica.url(),
        REPLICA_MAX_LAG_SECONDS=str(max_lag))


def replica_state(app: Flask) -> dict[str, Any]:
    """The replica as the app last saw it (api.replicas.ReplicaSet.report)."""
    rows: list[dict[str, Any]] = app.extensions["db_replicas"].report()
    return rows[0]


def price_of(client: Any, symbol: str, fresh: bool = False) -> str:
    """GET /data?symbol=<symbol>'s price (one record); `fresh`: a query string never asked
    before, so the answer cache cannot have it and the read reaches a database."""
    tail = f"&page_size={1 + next(_FRESH) % 99}" if fresh else ""
    response = client.get(f"/data?symbol={symbol}{tail}")
    assert response.status_code == 200, response.get_data(as_text=True)
    records = response.get_json()["data"]
    assert len(records) == 1, records
    return str(records[0]["price_usd"])


def primary_price(engine: Engine, symbol: str) -> str:
    """The current price of `symbol` on the primary, as the API prints it."""
    with engine.connect() as conn:
        return str(conn.exec_driver_sql(
            "SELECT price_usd::text FROM current_quotes WHERE symbol = %s", (symbol,)).scalar())


def healthy_replica(cluster: Cluster) -> None:
    """The replica running, replaying and caught up (a previous case may have left it not)."""
    if not cluster.replica.running():
        cluster.replica.start()
    cluster.replica.query("SELECT pg_wal_replay_resume()")
    cluster.wait_caught_up()


def test_data_is_read_on_the_replica_and_health_and_metrics_show_it(
    cluster: Cluster, seeded: Settings, app_factory: Callable[..., Flask]
) -> None:
    healthy_replica(cluster)
    # No answer cache: every GET /data reads the database.
    app = app_factory(api_settings(cluster, seeded, 5.0), DATA_CACHE_MAX_BYTES=0,
                      REPLICA_CHECK_SECONDS=0.2)
    client = app.test_client()
    asset = client.get("/data?symbol=C1").get_json()["data"][0]["asset_id"]
    on_primary = cluster.primary.log_statements(PRIMARY_APP, "quotes")
    on_replica = cluster.replica.log_statements(APPLICATION_NAME, "quotes")
    load = Load(app, ["/data?page_size=50", "/data?symbol=C2", f"/data/{asset}",
                      f"/data/{asset}/history?page_size=5"], threads=6).start()
    active_seen = 0
    watcher = cluster.replica.connect()
    try:
        deadline = time.monotonic() + 30
        with watcher.cursor() as cursor:
            while (active_seen < 3 or load.total() < 200) and time.monotonic() < deadline:
                cursor.execute(ACTIVE_READS, (APPLICATION_NAME,))
                active_seen += int(cursor.fetchone()[0])
    finally:
        watcher.close()
        load.stop()
    answered = load.total()
    assert load.failures == [] and answered >= 200, (answered, load.failures)
    # Seen on the replica while running, in pg_stat_activity, and in its statement log.
    assert active_seen >= 3, active_seen
    # Each GET reads quotes or current_quotes at least once (most of them twice).
    replica_reads = cluster.replica.log_statements(APPLICATION_NAME, "quotes") - on_replica
    assert replica_reads >= answered, (replica_reads, answered)
    # The API's primary connections read no quote meanwhile.
    assert cluster.primary.log_statements(PRIMARY_APP, "quotes") == on_primary

    health = client.get("/health").get_json()
    check = health["checks"]["replicas"]
    name = f"127.0.0.1:{cluster.replica.port}/{DATABASE}"
    assert check["ok"] is True and check["max_lag_seconds"] == 5.0, check
    (row,) = check["replicas"]
    assert row["name"] == name and row["in_use"] is True and row["state"] == "ok", row
    assert 0 <= row["lag_seconds"] <= 5.0, row
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'kasparro_replica_in_use{{replica="{name}"}} 1.0' in metrics
    lag = re.search(rf'kasparro_replica_lag_seconds{{replica="{re.escape(name)}"}} (\S+)',
                    metrics)
    assert lag is not None and 0 <= float(lag.group(1)) <= 5.0, metrics[-2000:]
    # A replica is named by host, port and database: no user, no password, no URL.
    assert "postgres@" not in metrics and "postgresql" not in str(health)
    print(f"\n[replica reads] {answered} GETs answered 200 from {load.threads} threads; "
          f"replica log: {replica_reads} statements on quotes from {APPLICATION_NAME}, "
          f"pg_stat_activity: {active_seen} active reads sampled; primary: 0 from "
          f"{PRIMARY_APP}; health lag {row['lag_seconds']} s")


def test_replay_paused_past_the_bound_sends_reads_to_the_primary(
    cluster: Cluster, seeded: Settings, primary_engine: Engine,
    app_factory: Callable[..., Flask]
) -> None:
    healthy_replica(cluster)
    bound = 5.0
    app = app_factory(api_settings(cluster, seeded, bound), REPLICA_CHECK_SECONDS=0.2)
    client = app.test_client()
    cache = app.extensions["data_cache"]
    old = price_of(client, "C1")
    assert old == primary_price(primary_engine, "C1") and replica_state(app)["in_use"]

    # A commit the replica replays, then replay paused: the lag counts from that commit.
    cluster.primary.query("CREATE TABLE IF NOT EXISTS scale_heartbeat (at timestamptz)")
    cluster.primary.query("INSERT INTO scale_heartbeat VALUES (now())")
    cluster.wait_caught_up()
    cluster.replica.query("SELECT pg_wal_replay_pause()")
    wait_for(lambda: cluster.replica.query("SELECT pg_get_wal_replay_pause_state()")[0][0]
             == "paused", 10, "replay to pause")
    paused_at = time.monotonic()
    version = publish(primary_engine, seeded, seeded.csv_dir, day=3, price="7.")
    new = primary_price(primary_engine, "C1")
    assert new != old
    with app.app_context():
        wait_for(lambda: current_data_version() == version, 10, "the publish's notification")

    # Within the bound the replica may still answer, with the older data; that answer is not
    # cached under the primary's newer version.
    stale_reads = 0
    while time.monotonic() - paused_at < bound - 1.0:
        price = price_of(client, "C1")
        assert price in (old, new)
        cached = cache.get(version, b"symbol=C1")
        assert cached is None or new.encode() in cached.head + cached.middle + cached.tail
        stale_reads += price == old
        time.sleep(0.2)

    # Past the bound: the primary answers, and only the new data.
    wait_for(lambda: price_of(client, "C1") == new, bound + 5, "a read on the primary")
    switched_after = time.monotonic() - paused_at
    state = replica_state(app)
    assert state["in_use"] is False and state["state"] == "lagging", state
    assert state["lag_seconds"] > bound, state
    for _ in range(20):
        assert price_of(client, "C1") == new
    cached = cache.get(version, b"symbol=C1")
    assert cached is not None and new.encode() in cached.head + cached.middle + cached.tail
    health = client.get("/health").get_json()
    assert health["checks"]["replicas"]["ok"] is False and health["status"] != "ok", health
    assert health["checks"]["replicas"]["replicas"][0]["in_use"] is False
    lag_seen = health["checks"]["replicas"]["replicas"][0]["lag_seconds"]

    # Replay resumed: the replica catches up and is used again.
    cluster.replica.query("SELECT pg_wal_replay_resume()")
    cluster.wait_caught_up()
    wait_for(lambda: price_of(client, "C1", fresh=True) == new
             and replica_state(app)["in_use"], 10, "the replica back in use")
    print(f"\n[replay paused] bound {bound} s: {stale_reads} older answers from the replica "
          f"within it (none cached under version {version}); reads on the primary "
          f"{switched_after:.1f} s after the pause; health lag {lag_seen} s; back in use "
          "after resume")


def test_replica_killed_under_load_no_read_fails(
    cluster: Cluster, seeded: Settings, app_factory: Callable[..., Flask],
    caplog: pytest.LogCaptureFixture
) -> None:
    healthy_replica(cluster)
    app = app_factory(api_settings(cluster, seeded, 5.0), DATA_CACHE_MAX_BYTES=0,
                      REPLICA_CHECK_SECONDS=0.2)
    client = app.test_client()
    asset = client.get("/data?symbol=C1").get_json()["data"][0]["asset_id"]
    assert replica_state(app)["in_use"]
    caplog.set_level(logging.WARNING, logger="api.db")
    load = Load(app, ["/data?page_size=50", "/data?symbol=C2", f"/data/{asset}",
                      f"/data/{asset}/history?page_size=5"], threads=8).start()
    try:
        wait_for(lambda: load.total() >= 100, 30, "load on the replica")
        before_crash = load.total()
        cluster.replica.stop("immediate")
        crashed_at = load.total()
        wait_for(lambda: load.total() >= crashed_at + 300, 60, "load after the crash")
        state = replica_state(app)
        assert state["state"] == "down" and state["in_use"] is False, state
        cluster.replica.start()
        wait_for(lambda: replica_state(app)["in_use"], 60, "the replica back in use")
        back_at = load.total()
        wait_for(lambda: load.total() >= back_at + 100, 30, "load after the restart")
    finally:
        load.stop()
    assert load.failures == [], load.failures
    answered = load.total()
    retried = [r for r in caplog.records if "answering from the primary" in r.getMessage()]
    print(f"\n[replica crash] {answered} GETs from {load.threads} threads, all 200: "
          f"{before_crash} before the crash, {back_at - crashed_at} while it was down or "
          f"restarting, {len(retried)} reads retried on the primary after failing on it")


def test_post_job_then_get_it_never_404_while_the_replica_lags(
    cluster: Cluster, seeded: Settings, app_factory: Callable[..., Flask]
) -> None:
    healthy_replica(cluster)
    # A bound so wide that the paused replica stays in use for every read it may serve.
    app = app_factory(api_settings(cluster, seeded, 3600.0), REPLICA_CHECK_SECONDS=0.2)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {TEST_TOKEN}"}
    cluster.replica.query("SELECT pg_wal_replay_pause()")
    try:
        wait_for(lambda: cluster.replica.query("SELECT pg_get_wal_replay_pause_state()")[0][0]
                 == "paused", 10, "replay to pause")
        missing_on_replica = 0
        for n in range(50):
            posted = client.post("/jobs", json={"sources": ["csv"]}, headers=auth)
            assert posted.status_code in (200, 202), posted.get_json()
            job_id = posted.get_json()["id"]
            got = client.get(f"/jobs/{job_id}")
            assert got.status_code == 200, (n, got.get_json())
            assert got.get_json()["id"] == job_id
            runs = got.get_json()["runs"]
            assert client.get(f"/runs/{runs[0]['id']}").status_code == 200
            # The hazard is real: the replica, in use for other reads, has not the job.
            missing_on_replica += int(cluster.replica.query(
                "SELECT count(*) FROM jobs WHERE id = %s", (job_id,))[0][0] == 0)
            assert client.get("/data?symbol=C1").status_code == 200
            assert replica_state(app)["in_use"], replica_state(app)
    finally:
        cluster.replica.query("SELECT pg_wal_replay_resume()")
    assert missing_on_replica == 50
    print("\n[read your writes] 50 POST /jobs then GET /jobs/<id> and /runs/<id>: all 200; "
          f"the replica (in use, replay paused) lacked {missing_on_replica} of the 50 jobs")
