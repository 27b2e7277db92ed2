"""Run anomaly rules on real runs rows: each anomaly found, stored once, with its evidence."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from shared.quality.anomalies import (
    DRIFT, DURATION_HIGH, FAILURE_STREAK, INSERTED_LOW, REJECT_RATE_JUMP, AnomalyThresholds,
    quote_anomalies, record_anomalies, recent_runs, robust_z, run_anomalies, source_anomalies,
)
from shared.config import load_settings
from shared.quality.checks import make_flag
from tests.helpers.runs import add_run_in_series

T = AnomalyThresholds()


def stored(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT kind, source, key, run_id, evidence FROM anomalies ORDER BY id")).all()


def detect_and_record(engine: Engine, source: str) -> int:
    with Session(engine) as session, session.begin():
        return record_anomalies(session, source_anomalies(session, source, T))


def test_fewer_rows_slower_run_and_failure_streak_each_reported_once(
        clean_db: Engine) -> None:
    with clean_db.begin() as conn:
        for n in range(8):
            add_run_in_series(conn, "coingecko", inserted=250 + n, seconds=10 + n % 3)
        few = add_run_in_series(conn, "coingecko", inserted=25)
        for n in range(3):
            add_run_in_series(conn, "coingecko", inserted=250 + n, seconds=11)
        slow = add_run_in_series(conn, "coingecko", seconds=110)
        fails = [add_run_in_series(conn, "coingecko", status="failed", inserted=0,
                                   fetched=0, error=f"HTTP 503 #{n}") for n in range(3)]
        # Another source's normal runs are not judged against coingecko's.
        for _ in range(8):
            add_run_in_series(conn, "coinpaprika", inserted=2000, fetched=2000, seconds=30)
    assert detect_and_record(clean_db, "coingecko") == 3
    assert detect_and_record(clean_db, "coinpaprika") == 0
    rows = stored(clean_db)
    assert [(r.kind, r.run_id) for r in rows] == [
        (INSERTED_LOW, few), (DURATION_HIGH, slow), (FAILURE_STREAK, fails[-1])]
    low = rows[0].evidence
    assert (low["metric"], low["value"], low["baseline_median"]) == ("inserted", 25.0, 253.5)
    assert low["baseline_runs"] == 8 and low["rule"]
    slow_ev = rows[1].evidence
    assert slow_ev["value"] == 110.0 and slow_ev["baseline_median"] == 11.0
    streak = rows[2].evidence
    assert streak["run_ids"] == fails and streak["value"] == 3
    assert streak["last_error"] == "HTTP 503 #2" and rows[2].key == f"run:{fails[0]}"
    # Running the rules again (next schedule, a 4th failure) reports nothing new.
    with clean_db.begin() as conn:
        add_run_in_series(conn, "coingecko", status="failed", inserted=0, fetched=0, error="again")
    assert detect_and_record(clean_db, "coingecko") == 0
    assert len(stored(clean_db)) == 3


def test_a_reject_rate_jump_and_drift_events_are_anomalies(clean_db: Engine) -> None:
    with clean_db.begin() as conn:
        for _ in range(6):
            add_run_in_series(conn, "csv", fetched=1000, inserted=1000, rejected=5)
        bad = add_run_in_series(conn, "csv", fetched=1000, inserted=700, rejected=300)
        conn.execute(text(
            "INSERT INTO drift_events (source, run_id, location, kind, field, observed, "
            "confidence, mapped, detail) VALUES ('csv', :r, 'f.csv', 'renamed', 'close', "
            "'Close*', 0.9, true, 'header renamed')"), {"r": bad})
    assert detect_and_record(clean_db, "csv") == 2
    rows = stored(clean_db)
    assert [(r.kind, r.run_id) for r in rows] == [(REJECT_RATE_JUMP, bad), (DRIFT, bad)]
    assert rows[0].evidence["value"] == 0.3 and rows[0].evidence["baseline_median"] == 0.005
    assert rows[1].evidence["baseline"] == "close" and rows[1].evidence["value"] == "Close*"
    assert detect_and_record(clean_db, "csv") == 0


def test_ordinary_variation_and_short_histories_raise_nothing(clean_db: Engine) -> None:
    with clean_db.begin() as conn:
        for n in range(12):
            add_run_in_series(conn, "coingecko", inserted=200 + 17 * (n % 5), seconds=8 + n % 4)
        # Only three runs so far: not enough history to judge a tiny one.
        for _ in range(3):
            add_run_in_series(conn, "csv", inserted=1000)
        add_run_in_series(conn, "csv", inserted=1)
    assert detect_and_record(clean_db, "coingecko") == 0
    assert detect_and_record(clean_db, "csv") == 0
    with Session(clean_db) as session:
        runs = recent_runs(session, "coingecko", 5)
    assert [r.id for r in runs] == sorted(r.id for r in runs) and len(runs) == 5


def test_rules_are_pure_and_settings_drive_them() -> None:
    assert robust_z(10.0, [10.0, 10.0, 10.0]) == (10.0, 0.0, 0.0)
    median, mad, z = robust_z(1.0, [9.0, 10.0, 11.0])
    assert (median, mad) == (10.0, 1.0) and round(z, 3) == round(-9 / 1.4826, 3)
    assert run_anomalies([], T) == []
    t = AnomalyThresholds.from_settings(load_settings({"ANOMALY_FAILURE_STREAK": "5"}))
    assert t.failure_streak == 5 and AnomalyThresholds.from_settings(load_settings({})) == T


def test_a_flagged_quote_is_a_data_anomaly_keyed_by_the_quote(clean_db: Engine) -> None:
    flag = make_flag("implausible", "market cap is 6.17e+11 times the 24h volume", ratio=6e11)
    at = datetime(2022, 2, 23, 11, 23, 11, tzinfo=timezone.utc)
    found = quote_anomalies("coingecko", 7, at, [flag])
    with Session(clean_db) as session, session.begin():
        assert record_anomalies(session, found + found) == 1
    (row,) = stored(clean_db)
    assert (row.kind, row.key) == ("implausible", f"quote:7:{at.isoformat()}")
    assert row.evidence["ratio"] == 6e11 and row.evidence["asset_id"] == 7
