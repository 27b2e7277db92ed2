"""queries.freshness: one state per source (fresh, stale or failing) from runs and quotes."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from shared.config import ConfigError, load_settings
from shared.queries.freshness import FAILING, FRESH, STALE, classify, source_states
from tests.api.helpers import coins_csv
from tests.helpers.csv_runs import HEADER, only_file, run_csv
from tests.helpers.runs import add_run

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def test_objectives_default_to_three_schedules_and_are_configurable(
        base_env: dict[str, str]) -> None:
    settings = load_settings({**base_env, "ETL_SCHEDULE_SECONDS": "100",
                              "FRESHNESS_CSV_SECONDS": "7200"})
    assert settings.freshness_objective("coingecko") == 300
    assert settings.freshness_objective("csv") == 7200
    with pytest.raises(ConfigError, match="FRESHNESS_COINGECKO_SECONDS"):
        load_settings({**base_env, "FRESHNESS_COINGECKO_SECONDS": "soon"})


def test_classify_rule() -> None:
    assert classify(0, 10.0, 60) == FRESH
    assert classify(0, 61.0, 60) == STALE
    assert classify(0, None, 60) == STALE
    assert classify(1, 10.0, 60) == FAILING


def test_states_from_runs(clean_db: Engine, base_env: dict[str, str]) -> None:
    settings = load_settings({**base_env, "ETL_SCHEDULE_SECONDS": "60"})
    minute = timedelta(minutes=1)
    add_run(clean_db, "csv", "succeeded", NOW - minute)
    # coingecko: succeeded long ago, then two failures (one partial) and a skipped run.
    add_run(clean_db, "coingecko", "succeeded", NOW - 30 * minute)
    add_run(clean_db, "coingecko", "failed", NOW - 20 * minute, "old failure")
    add_run(clean_db, "coingecko", "partial", NOW - 10 * minute,
            "coingecko: HTTP 500 from upstream")
    skipped = add_run(clean_db, "coingecko", "skipped", NOW - 5 * minute)
    # coinpaprika: an old success only.
    add_run(clean_db, "coinpaprika", "succeeded", NOW - 4 * minute, trigger="api")
    with Session(clean_db) as session:
        states = source_states(session, settings, NOW)
    assert list(states) == ["coingecko", "coinpaprika", "csv"]
    csv, gecko, paprika = states["csv"], states["coingecko"], states["coinpaprika"]
    assert csv.state == FRESH and csv.age_seconds == 60.0 and csv.objective_seconds == 180
    assert csv.consecutive_failures == 0 and csv.last_error is None
    assert csv.next_run_at == NOW - minute - timedelta(seconds=5) + timedelta(seconds=60)
    assert gecko.state == FAILING and gecko.consecutive_failures == 2
    assert gecko.last_error == "coingecko: HTTP 500 from upstream"
    assert gecko.last_run_id == skipped and gecko.last_run_status == "skipped"
    assert paprika.state == STALE and paprika.age_seconds == 240.0
    # Only beat jobs say when the schedule runs next.
    assert paprika.next_run_at is None
    # A success after the failures clears them.
    add_run(clean_db, "coingecko", "succeeded", NOW - 2 * minute)
    with Session(clean_db) as session:
        again = source_states(session, settings, NOW)["coingecko"]
    assert again.state == FRESH and again.consecutive_failures == 0
    assert again.last_error == "coingecko: HTTP 500 from upstream"


def test_never_run_is_stale_and_data_age_comes_from_current_quotes(
        clean_db: Engine, base_env: dict[str, str], csv_dir: Path) -> None:
    settings = load_settings({**base_env, "CSV_DIR": str(csv_dir), "ETL_SOURCES": "csv"})
    with Session(clean_db) as session:
        state = source_states(session, settings, NOW)["csv"]
    assert state.state == STALE and state.last_success_at is None
    assert state.data_age_seconds is None and state.next_run_at is None
    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 3))
    assert run_csv(clean_db, settings)["status"] == "succeeded"
    now = datetime.now(timezone.utc)
    with Session(clean_db) as session:
        state = source_states(session, settings, now)["csv"]
        newest = session.execute(text(
            "SELECT max(observed_at) FROM current_quotes WHERE source = 'csv'")).scalar_one()
    assert state.state == FRESH
    assert state.data_newest_at == newest
    assert state.data_age_seconds == round((now - newest).total_seconds(), 1)


def test_secret_error_text_is_scrubbed(clean_db: Engine, base_env: dict[str, str]) -> None:
    add_run(clean_db, "csv", "failed", NOW, 'psycopg2 error: SELECT * FROM runs WHERE '
            'password=hunter2 at /srv/app/shared/load.py line 3')
    with Session(clean_db) as session:
        state = source_states(session, load_settings(base_env), NOW)["csv"]
    assert state.state == FAILING
    assert "hunter2" not in (state.last_error or "")
