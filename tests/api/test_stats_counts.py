"""The counts /stats, /metrics and /status serve are the writers' own: equal to count(*) after
every kind of load (API and CSV runs, a re-run with nothing new, rejects), a fold and a drop."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from shared.config import Settings, load_settings
from shared.storage import counters
from shared.storage.partitions import KNOWN, maintain
from shared.storage.retention import expire
from tests.api.helpers import run_sources
from tests.helpers.csv_runs import HEADER, csv_row, run_csv
from tests.helpers.partitions import drop_partitions

# Ground truth, read the slow way: every figure the writers keep, from the tables themselves.
_RAW_TABLES = {"raw_line_blocks": "sum(cardinality(line_numbers))",
               "raw_item_blocks": "sum(items)", "raw_records": "count(*)"}
_SCANS = [
    "SELECT source, 'quotes', count(*) FROM quotes GROUP BY 1",
    "SELECT source, 'rejected', count(*) FROM rejected_records GROUP BY 1",
    "SELECT source, 'anomaly:' || kind, count(*) FROM anomalies GROUP BY 1, 2",
    "SELECT source, CASE WHEN mapped THEN 'drift:mapped' ELSE 'drift:unmapped' END, count(*) "
    "FROM drift_events GROUP BY 1, 2",
    "SELECT source, 'runs:' || kind || ':' || status, count(*) FROM runs GROUP BY 1, 2",
    "SELECT source, 'http_requests', sum(http_requests) FROM runs GROUP BY 1",
    "SELECT source, 'flagged', sum(quotes) FROM flag_sets GROUP BY 1",
    "SELECT source, 'rate_limit_wait_seconds', sum(rate_limit_wait_seconds) FROM runs "
    "GROUP BY 1",
]


def _scanned(engine: Engine) -> dict[str, dict[str, Decimal]]:
    result: dict[str, dict[str, Decimal]] = {}
    with engine.connect() as conn:
        scans = list(_SCANS)
        for table, measure in _RAW_TABLES.items():
            if conn.execute(text(f"SELECT to_regclass('{table}')")).scalar() is not None:
                scans.append(f"SELECT source, 'raw', {measure} FROM {table} GROUP BY 1")
        for sql in scans:
            for source, layer, n in conn.execute(text(sql)).all():
                by_source = result.setdefault(layer, {})
                by_source[source] = by_source.get(source, Decimal(0)) + Decimal(n or 0)
    return {layer: {s: n for s, n in by_source.items() if n}
            for layer, by_source in result.items() if any(by_source.values())}


def _kept(engine: Engine, layers: Any) -> dict[str, dict[str, Decimal]]:
    with engine.connect() as conn:
        kept = counters.totals(conn)
    return {layer: {s: n for s, n in kept.get(layer, {}).items() if n} for layer in layers
            if any(kept.get(layer, {}).values())}


def _assert_exact(engine: Engine) -> dict[str, dict[str, Decimal]]:
    scanned = _scanned(engine)
    assert _kept(engine, scanned) == scanned
    return scanned


def test_kept_counts_equal_the_tables_after_loads_reruns_rejects_and_a_fold(
    clean_db: Engine, api_settings: Settings, csv_dir: Path
) -> None:
    first = run_sources(clean_db, api_settings, ["coingecko", "coinpaprika", "csv"])
    assert first["status"] == "succeeded", first
    scanned = _assert_exact(clean_db)
    assert {"coingecko", "coinpaprika", "csv"} <= set(scanned["quotes"])
    assert {"coingecko", "coinpaprika", "csv"} <= set(scanned["raw"])
    assert scanned["flagged"], "the recorded pages hold flagged quotes (stored with a flag set)"

    # Nothing new: the counts move by the runs only.
    again = run_sources(clean_db, api_settings, ["coingecko", "coinpaprika", "csv"])
    assert again["status"] == "succeeded"
    assert _assert_exact(clean_db)["quotes"] == scanned["quotes"]

    # A file with bad lines: its rejects counted, its good lines too.
    (csv_dir / "rejects.csv").write_text(
        HEADER + csv_row(1, 1) + "2,Testcoin,TST,not a date,1,1,1,1,1,1\n"
        + "3,Testcoin,TST,2021-01-03 23:59:59,110,90,95,-5,1000,5000\n" + csv_row(4, 4))
    run = run_csv(clean_db, api_settings)
    assert run["rejected"] >= 2, run
    assert _assert_exact(clean_db)["rejected"]["csv"] >= 2

    with clean_db.begin() as conn:
        rows_before = conn.execute(text("SELECT count(*) FROM layer_counts")).scalar_one()
        counters.fold(conn)
        rows_after = conn.execute(text("SELECT count(*) FROM layer_counts")).scalar_one()
        distinct = conn.execute(text(
            "SELECT count(*) FROM (SELECT DISTINCT source, layer FROM layer_counts) d"
        )).scalar_one()
    assert rows_after == distinct < rows_before
    _assert_exact(clean_db)


def test_a_dropped_partition_is_taken_off_the_counts(
    clean_db: Engine, api_settings: Settings
) -> None:
    assert run_sources(clean_db, api_settings, ["csv"])["status"] == "succeeded"
    with clean_db.begin() as conn:
        partition, held = conn.execute(text(
            "SELECT c.relname, (SELECT count(*) FROM quotes q WHERE q.tableoid = c.oid) AS n "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'quotes'::regclass ORDER BY n DESC LIMIT 1")).one()
        assert held > 0
        conn.execute(text(f'ALTER TABLE quotes DETACH PARTITION "{partition}"'))
        counters.subtract_dropped(conn, "quotes", partition)
        conn.execute(text(f'DROP TABLE "{partition}"'))
    KNOWN.forget()  # this process's writers made their list of partitions before the drop
    assert _assert_exact(clean_db)["quotes"]["csv"] > 0


def test_retention_keeps_the_counts_exact(clean_db: Engine, api_settings: Settings,
                                          base_env: dict[str, str], csv_dir: Path) -> None:
    """Quote partitions folded into rollups and dropped (the CSV history is years old) and
    raw partitions dropped: both taken off the kept counts in the dropping transaction."""
    assert run_sources(clean_db, api_settings, ["csv"])["status"] == "succeeded"
    before = _assert_exact(clean_db)
    settings = load_settings({**base_env, "CSV_DIR": str(csv_dir),
                              "QUOTES_FULL_RESOLUTION_DAYS": "365", "RAW_RETENTION_DAYS": "1"})
    dropped = expire(clean_db, settings, datetime.now(timezone.utc) + timedelta(days=60))
    KNOWN.forget()
    assert dropped["quotes"] and any(dropped[t] for t in dropped if t.startswith("raw_")), dropped
    after = _assert_exact(clean_db)
    assert after.get("quotes", {}).get("csv", 0) < before["quotes"]["csv"]
    assert after.get("raw", {}).get("csv", 0) < before["raw"]["csv"]
    # Leave no rollup behind (retention's own tests count the rollup partitions they make).
    with clean_db.begin() as conn:
        conn.execute(text("TRUNCATE retention_horizons, rollup_folds, quotes_hourly, "
                          "quotes_daily"))
    for rollup in ("quotes_hourly", "quotes_daily"):
        drop_partitions(clean_db, rollup, before=datetime.max.replace(tzinfo=timezone.utc))
    # Expiring 60 days ahead dropped this week's quote and raw partitions too: made again, as
    # beat keeps them, for the session's later tests that write without a writer's ensure.
    maintain(clean_db)
