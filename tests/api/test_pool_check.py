"""The API's pooled connections: one the server ended is replaced at checkout, not a 500."""
from __future__ import annotations

from pathlib import Path

from flask import Flask
from sqlalchemy import Engine, text

from shared.config import Settings
from tests.api.helpers import coins_csv
from tests.helpers.csv_runs import HEADER, only_file, run_csv


def test_a_pooled_connection_the_server_ended_is_replaced(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    app = _app_with_five_coins(clean_db, settings, csv_dir)
    client = app.test_client()
    first = client.get("/data?total=true")
    assert first.status_code == 200
    pool = app.extensions["db_engine"].pool
    assert pool.checkedin() >= 1
    # A restart or an operator's pg_terminate_backend: the idle pooled backends go away.
    with clean_db.connect() as conn:
        killed = conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'")).scalar_one()
    assert killed >= 1
    again = client.get("/data?total=true")
    assert again.status_code == 200, again.get_data(as_text=True)
    assert again.get_json()["data"] == first.get_json()["data"]
    assert again.get_json()["pagination"]["total"] == 5


def test_a_page_read_on_a_connection_the_server_ended_is_read_again(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    """GET /data's page runs on the autocommit engine, which does not ping: a dead pooled
    connection fails the statement, and the read runs again on a new one."""
    app = _app_with_five_coins(clean_db, settings, csv_dir)
    client = app.test_client()
    first = client.get("/data")
    assert first.status_code == 200
    pool = app.extensions["db_statement_engine"].pool
    assert pool.checkedin() == 1  # the page's connection, back in the pool
    with clean_db.connect() as conn:
        killed = {pid for pid, done in conn.execute(text(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'")) if done}
    assert killed
    for _ in range(3):
        again = client.get("/data")
        assert again.status_code == 200, again.get_data(as_text=True)
        assert again.get_json()["data"] == first.get_json()["data"]
    # Read on a new backend: the dead one was found by the failed statement, not a ping.
    assert not killed & _backend_pids(clean_db)


def _app_with_five_coins(clean_db: Engine, settings: Settings, csv_dir: Path) -> Flask:
    """An app (answer cache off) over a database holding five coins loaded from a CSV file."""
    from api import create_app

    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 5))
    run_csv(clean_db, settings)
    return create_app({"TESTING": True, "RATELIMIT_ENABLED": False,
                       "DATA_CACHE_MAX_BYTES": 0}, settings=settings)


def _backend_pids(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")).scalars())
