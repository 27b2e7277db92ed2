"""Time partitions made by other processes: two writers at once, beat's task in a real worker,
and a worker killed (kill -9) in the middle of that task."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import Engine, text

from shared import task_names
from shared.config import Settings
from shared.locks import partition_lock, try_lock, unlock
from shared.storage.compaction import PACKED_COMMENT, due
from shared.storage.partitions import (
    KNOWN,
    QUOTES,
    RAW_LINE_BLOCKS,
    ensure,
    existing_partitions,
    maintain,
)
from tests.conftest import ROOT, WorkerProcess
from tests.helpers.broker import sender
from tests.helpers.waiting import poll
from tests.helpers.partitions import drop_partitions, ensure_quote_partitions

# Starts real processes (writer processes, a celery worker): not in the fast subset.
pytestmark = pytest.mark.processes

UTC = timezone.utc
# One process's writer call: ensure() the quote spans given as JSON; prints what it created.
_ENSURE = """
import json, sys
from datetime import datetime
from sqlalchemy import create_engine
from shared.storage.partitions import QUOTES, ensure
spans = [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in json.loads(sys.argv[2])]
print(json.dumps(ensure(create_engine(sys.argv[1]), QUOTES, spans)))
"""
# Backends waiting for the partitions advisory lock of quotes.
_WAITING_FOR_LOCK = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
    "AND classid = :ns AND objid = :obj")
_CHECKSUM = text("SELECT count(*), md5(string_agg(q::text, ',' ORDER BY asset_id, source, "
                 "observed_at)) FROM quotes q")


def _year(year: int) -> datetime:
    return datetime(year, 1, 1, tzinfo=UTC)


def _names(engine: Engine, table: str) -> set[str]:
    with engine.begin() as conn:
        return set(existing_partitions(conn, table))


@pytest.fixture
def ahead_dropped(engine: Engine) -> Iterator[dict[str, set[str]]]:
    """The tables' partitions that start after now, dropped (they are empty); made again after."""
    # Made first, as beat keeps them: earlier tests of the session (retention's) may have
    # dropped some of them.
    KNOWN.forget()
    maintain(engine)
    now = datetime.now(UTC)
    dropped = {table: set(drop_partitions(engine, table, after=now))
               for table in ("quotes", "raw_line_blocks")}
    assert all(dropped.values()), dropped
    yield dropped
    KNOWN.forget()
    maintain(engine)


def _store_some_quotes(engine: Engine) -> tuple[int, str]:
    """The last day's quotes (their partitions made as a writer makes them); the table's
    (count, checksum)."""
    now = datetime.now(UTC)
    ensure(engine, QUOTES, [(now - timedelta(days=1), now)])
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO quotes (asset_id, source, observed_at, source_asset_id, price_usd) "
            "SELECT a, 'coingecko', date_trunc('hour', now()) - h * interval '1 hour', "
            "'coin-' || a, a * 1.5 + h FROM generate_series(1, 100) a, generate_series(0, 23) h"))
        found = conn.execute(_CHECKSUM).one()
    return int(found[0]), str(found[1])


def test_two_processes_ensuring_overlapping_spans_create_each_partition_once(
        clean_db: Engine, base_env: dict[str, str]) -> None:
    drop_partitions(clean_db, "quotes", before=_year(1998))
    key = partition_lock("quotes")
    spans = {"a": [("1995-03-01T00:00:00+00:00", "1996-06-01T00:00:00+00:00")],
             "b": [("1996-02-01T00:00:00+00:00", "1997-12-31T00:00:00+00:00")]}
    procs: dict[str, subprocess.Popen[str]] = {}
    with clean_db.connect() as holder:
        # Both writers are held at the lock, so they meet there for certain.
        assert try_lock(holder, key)
        try:
            for name, span in spans.items():
                procs[name] = subprocess.Popen(
                    [sys.executable, "-c", _ENSURE, base_env["DATABASE_URL"], json.dumps(span)],
                    cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)

            def waiting() -> int:
                with clean_db.connect() as conn:
                    return int(conn.execute(_WAITING_FOR_LOCK, {
                        "ns": int(key.namespace), "obj": key.object}).scalar_one())

            poll(waiting, lambda n: n == 2, 60, "both writers waiting for the lock")
        finally:
            unlock(holder, key)
    created = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        created[name] = set(json.loads(out))
    expected = {QUOTES.partition_name(_year(y), _year(y + 1)) for y in (1995, 1996, 1997)}
    assert created["a"] | created["b"] == expected
    assert not created["a"] & created["b"]
    # Rows of each year go in.
    with clean_db.begin() as conn:
        conn.execute(text(
            "INSERT INTO quotes (asset_id, source, observed_at, source_asset_id) "
            "SELECT 1, 'csv', make_timestamptz(y, 6, 1, 0, 0, 0, 'UTC'), 'x' "
            "FROM generate_series(1995, 1997) y"))
        conn.execute(text("TRUNCATE quotes"))
    drop_partitions(clean_db, "quotes", before=_year(1998))


@pytest.mark.e2e
def test_beats_maintenance_task_makes_the_partitions_ahead_in_a_worker(
        clean_db: Engine, settings: Settings, ahead_dropped: dict[str, set[str]],
        worker_factory: Callable[..., WorkerProcess]) -> None:
    ensure_quote_partitions(clean_db, datetime.now(UTC) - timedelta(days=60))  # a closed week
    with clean_db.connect() as conn:  # the oldest closed week whose key is not packed
        oldest = due(conn, datetime.now(UTC))[0][1]
    worker_factory()
    sender(settings).send_task(task_names.MAINTAIN_PARTITIONS)
    for table, names in ahead_dropped.items():
        poll(lambda: _names(clean_db, table), lambda found: names <= found, 60,
             f"{table}'s partitions ahead")
    now = datetime.now(UTC)
    with clean_db.begin() as conn:
        for table in (QUOTES, RAW_LINE_BLOCKS):
            bounds = [b for b in existing_partitions(conn, table.name).values() if b is not None]
            assert any(low <= now + table.ahead < high for low, high in bounds), table
    # Then it packs that week's key (shared.storage.compaction), one a run.
    comment = text("SELECT obj_description(CAST(:i AS regclass), 'pg_class')")

    def packed() -> object:
        with clean_db.connect() as conn:
            return conn.execute(comment, {"i": oldest}).scalar()

    poll(packed, lambda found: found == PACKED_COMMENT, 60, f"{oldest} packed")


@pytest.mark.faults
def test_kill_9_in_the_middle_of_maintenance_loses_nothing_and_a_rerun_completes(
        clean_db: Engine, settings: Settings, ahead_dropped: dict[str, set[str]],
        worker_factory: Callable[..., WorkerProcess]) -> None:
    before = _store_some_quotes(clean_db)
    app = sender(settings)
    worker = worker_factory()
    # The task does quotes, then raw_line_blocks, one transaction each. A SHARE lock on
    # raw_line_blocks stops it at that table's first ATTACH PARTITION: quotes committed, the
    # raw partition created in a transaction that is still open.
    holder = clean_db.connect()
    holder.execute(text("LOCK TABLE raw_line_blocks IN SHARE MODE"))

    def frozen() -> list[Any]:
        with clean_db.connect() as conn:
            return conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'ALTER TABLE \"raw_line_blocks\" ATTACH PARTITION%'")).all()

    try:
        app.send_task(task_names.MAINTAIN_PARTITIONS)
        (backend,), = poll(frozen, lambda rows: len(rows) == 1, 60, "the task at its attach")
        assert ahead_dropped["quotes"] <= _names(clean_db, "quotes")
        assert not ahead_dropped["raw_line_blocks"] & _names(clean_db, "raw_line_blocks")
        worker.kill()  # SIGKILL to the whole worker, pool child included
        worker.proc.wait(10)  # type: ignore[union-attr]
    finally:
        holder.rollback()
        holder.close()

    # The killed worker's backend gets the lock, then finds its client gone: it rolls back.
    def alive() -> int:
        with clean_db.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"),
                                    {"p": backend}).scalar_one())

    poll(alive, lambda n: n == 0, 60, "the killed task's backend gone")
    with clean_db.connect() as conn:
        orphans = conn.execute(text(
            "SELECT relname FROM pg_class c WHERE relname LIKE 'raw_line_blocks_p%' "
            "AND relkind = 'r' AND NOT relispartition")).scalars().all()
        after_kill = tuple(conn.execute(_CHECKSUM).one())
    assert orphans == []
    assert after_kill == before
    assert not ahead_dropped["raw_line_blocks"] & _names(clean_db, "raw_line_blocks")

    # The next run (beat's next tick, here sent at once to a fresh worker) completes the work.
    worker_factory()
    app.send_task(task_names.MAINTAIN_PARTITIONS)
    poll(lambda: _names(clean_db, "raw_line_blocks"),
         lambda found: ahead_dropped["raw_line_blocks"] <= found, 60, "raw partitions ahead")
    with clean_db.connect() as conn:
        assert tuple(conn.execute(_CHECKSUM).one()) == before
