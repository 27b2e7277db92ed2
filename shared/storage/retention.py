"""Retention: expired partitions folded into rollups, then detached and dropped whole.

Beat's hourly storage.maintain_partitions calls `expire` (docs/storage.md, "Retention and
rollups"). Per table, under its partition lock (a session lock: no writer makes a partition
of the table meanwhile; a busy lock skips the table until the next run), for each partition
whose upper bound is at or before the cutoff, oldest first:
1. (quotes, hourly rollups) in one transaction: the partition locked against writes (SHARE),
   its rows folded into the next rollup (shared.storage.rollups, `replace`), the horizon
   moved to its upper bound (reads take the rollup from then on) and the partition marked
   folded (rollup_folds, by oid);
2. `ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY` (no transaction; blocks no reader or
   writer), or `... FINALIZE` when a killed run left it pending;
3. in one transaction: the detached, now unchanging table folded again if it holds other
   rows than step 1 folded (`replace`: the same values plus any row written between 1 and 2;
   rows are only inserted, so an equal count means the same rows and no second fold), its
   quote_flags rows deleted and its flag_sets counts subtracted, the table dropped and its
   mark removed.
A kill at any point leaves the rows whole somewhere: in the partition (before 1), in the
rollup and the partition (after 1), or in the rollup and a detached table (after 2), which
the next run finds by its name and finishes. A partition made again below the horizon (rows
written later for an expired range: a CSV history file, a backfill) is not folded in step 1
(its rows are not read until folded), but in step 3 with `merge`, exactly once since fold and
drop commit together. Raw blocks' partitions are detached and dropped with no fold.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Callable

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from shared.config import Settings
from shared.locks import partition_lock, try_lock, unlock
from shared.storage import counters
from shared.storage.partitions import (
    DDL_LOCK_TIMEOUT,
    KNOWN,
    PARTITIONED_TABLES,
    QUOTES,
    PartitionedTable,
    create_missing,
)
from shared.storage.rollups import TO_DAILY, TO_HOURLY, Fold, advance_horizon, fold, horizons

log = logging.getLogger(__name__)

UTC = timezone.utc
# Tables whose name says they hold raw blocks (raw_line_blocks, raw_item_blocks, ...):
# RAW_RETENTION_DAYS drops their partitions, with nothing kept.
RAW_PREFIX = "raw_"
_TINY = timedelta(microseconds=1)

_ATTACHED = text("""
SELECT c.relname, c.oid::bigint, i.inhdetachpending,
       (regexp_match(b.expr, 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz,
       (regexp_match(b.expr, 'TO \\(''([^'']+)''\\)'))[1]::timestamptz
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid,
     LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS expr) b
WHERE i.inhparent = CAST(:parent AS regclass)
""")
# Detached partitions a killed run left: plain tables named as our partitions are.
_DETACHED = text("""
SELECT c.relname, c.oid::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND NOT c.relispartition AND n.nspname = current_schema()
  AND c.relname ~ :pattern
""")


@dataclass(frozen=True)
class Part:
    """A partition (or a detached one: `attached` False) with its bounds [low, high)."""

    name: str
    relid: int
    low: datetime
    high: datetime
    attached: bool
    pending: bool = False


def _from_name(name: str) -> tuple[datetime, datetime]:
    """The bounds a partition's name carries (`quotes_p20261130_20261207`)."""
    low, high = name[-17:-9], name[-8:]
    return (datetime.strptime(low, "%Y%m%d").replace(tzinfo=UTC),
            datetime.strptime(high, "%Y%m%d").replace(tzinfo=UTC))


def expiring(conn: Connection, table: PartitionedTable, cutoff: datetime) -> list[Part]:
    """The detached leftovers of `table` and its partitions ending at or before `cutoff`,
    oldest first."""
    parts = [Part(name, relid, *_from_name(name), attached=False) for name, relid in
             conn.execute(_DETACHED, {"pattern": rf"^{table.name}_p\d{{8}}_\d{{8}}$"})]
    for name, relid, pending, low, high in conn.execute(_ATTACHED, {"parent": table.name}):
        if high is not None and high.astimezone(UTC) <= cutoff:
            parts.append(Part(name, relid, low.astimezone(UTC), high.astimezone(UTC), True,
                              bool(pending)))
    return sorted(parts, key=lambda p: (p.low, p.name))


def _marked(conn: Connection) -> dict[int, int]:
    """Partitions folded and not yet dropped: oid -> the rows folded."""
    return {relid: rows for relid, rows in conn.execute(
        text("SELECT relid, rows FROM rollup_folds"))}


def _detach(conn: Connection, table: PartitionedTable, part: Part) -> None:
    """Detach `part` without blocking readers or writers (`conn` in autocommit)."""
    how = "FINALIZE" if part.pending else "CONCURRENTLY"
    conn.execute(text(f'ALTER TABLE "{table.name}" DETACH PARTITION "{part.name}" {how}'))


def _first_fold(engine: Engine, spec: Fold, part: Part) -> None:
    """Step 1: the attached partition's rows into the rollup, the horizon moved, marked."""
    with engine.begin() as tx:
        tx.execute(text(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'"))
        # No write in flight into the partition is left out of the fold.
        tx.execute(text(f'LOCK TABLE "{part.name}" IN SHARE MODE'))
        create_missing(tx, spec.target, [(part.low, part.high - _TINY)])
        rows = fold(tx, spec, part.name, merge=False)
        advance_horizon(tx, spec.source.name, part.high)
        tx.execute(text("INSERT INTO rollup_folds (relid, name, rows) VALUES (:r, :n, :c) "
                        "ON CONFLICT DO NOTHING"), {"r": part.relid, "n": part.name, "c": rows})


def _rows(conn: Connection, spec: Fold, part: Part) -> int:
    """What `fold` of `part` would count: a quotes partition's rows, or the quotes a rollup
    partition's rows hold (their sum; a merge into one adds to it)."""
    what = "coalesce(sum(quotes), 0)" if spec.source is not QUOTES else "count(*)"
    return int(conn.execute(text(f'SELECT {what} FROM "{part.name}"')).scalar_one())


def _last_fold(engine: Engine, spec: Fold, part: Part, folded: int | None) -> None:
    """Step 3: the detached table folded again, unless it holds exactly the `folded` rows
    of step 1 (rows are only ever inserted, so the same count is the same rows); merged when
    it was not folded before (None: made again late); then dropped."""
    with engine.begin() as tx:
        tx.execute(text(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'"))
        if folded is None or _rows(tx, spec, part) != folded:
            create_missing(tx, spec.target, [(part.low, part.high - _TINY)])
            fold(tx, spec, part.name, merge=folded is None)
        if spec.source is QUOTES:
            _forget_flags(tx, part)
            counters.subtract_dropped(tx, QUOTES.name, part.name)  # /stats' kept counts
        advance_horizon(tx, spec.source.name, part.high)
        tx.execute(text(f'DROP TABLE "{part.name}"'))
        tx.execute(text("DELETE FROM rollup_folds WHERE relid = :r"), {"r": part.relid})


def _forget_flags(tx: Connection, part: Part) -> None:
    """The dropped quotes' flag documents deleted and their flag sets' counts subtracted
    (quote_flags is not partitioned: sparse, docs/storage.md)."""
    tx.execute(text(
        f'UPDATE flag_sets s SET quotes = greatest(s.quotes - c.n, 0) FROM ('
        f'SELECT flag_set, count(*) AS n FROM "{part.name}" WHERE flag_set IS NOT NULL '
        f'GROUP BY flag_set) c WHERE s.id = c.flag_set'))
    tx.execute(text("DELETE FROM quote_flags WHERE observed_at >= :low AND observed_at < :high"),
               {"low": part.low, "high": part.high})


def _locked(engine: Engine, table: PartitionedTable) -> Connection | None:
    """An autocommit connection holding `table`'s partition lock; None when it is busy."""
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    if try_lock(conn, partition_lock(table.name)):
        return conn
    conn.close()
    log.info("retention: %s's partition lock is busy, left for the next run", table.name)
    return None


def expire_folded(engine: Engine, spec: Fold, cutoff: datetime) -> list[str]:
    """Fold and drop spec.source's partitions ending at or before `cutoff`; their names."""
    conn = _locked(engine, spec.source)
    if conn is None:
        return []
    dropped = []
    try:
        for part in expiring(conn, spec.source, cutoff):
            if part.attached:
                horizon = horizons(conn).get(spec.source.name)
                fresh = horizon is None or part.low >= horizon
                if fresh and not part.pending and part.relid not in _marked(conn):
                    _first_fold(engine, spec, part)
                _detach(conn, spec.source, part)
            _last_fold(engine, spec, part, _marked(conn).get(part.relid))
            dropped.append(part.name)
            log.info("retention: %s folded into %s and dropped", part.name, spec.target.name)
    finally:
        unlock(conn, partition_lock(spec.source.name))
        conn.close()
        KNOWN.forget()
    return dropped


def expire_raw(engine: Engine, table: PartitionedTable, cutoff: datetime) -> list[str]:
    """Detach and drop `table`'s partitions ending at or before `cutoff`; their names."""
    conn = _locked(engine, table)
    if conn is None:
        return []
    dropped = []
    try:
        for part in expiring(conn, table, cutoff):
            if part.attached:
                _detach(conn, table, part)
            with engine.begin() as tx:  # its rows off /stats' kept counts, with the drop
                counters.subtract_dropped(tx, table.name, part.name)
                tx.execute(text(f'DROP TABLE "{part.name}"'))
            dropped.append(part.name)
        if dropped:
            log.info("retention: dropped %s", ", ".join(dropped))
    finally:
        unlock(conn, partition_lock(table.name))
        conn.close()
        KNOWN.forget()
    return dropped


def expire(engine: Engine, settings: Settings, now: datetime | None = None
           ) -> dict[str, list[str]]:
    """Every expiry the settings ask for, as of `now`: the partitions dropped, by table."""
    now = now or datetime.now(UTC)
    steps: list[tuple[str, Callable[[], list[str]]]] = []
    if settings.raw_retention_days is not None:
        cutoff = now - timedelta(days=settings.raw_retention_days)
        steps += [(table.name, partial(expire_raw, engine, table, cutoff))
                  for table in PARTITIONED_TABLES if table.name.startswith(RAW_PREFIX)]
    for spec, days in ((TO_HOURLY, settings.quotes_full_resolution_days),
                       (TO_DAILY, settings.quotes_hourly_days)):
        if days is not None:
            steps.append((spec.source.name, partial(expire_folded, engine, spec,
                                                    now - timedelta(days=days))))
    dropped: dict[str, list[str]] = {}
    for name, step in steps:
        try:
            dropped[name] = step()
        except OperationalError as exc:
            # A lock not granted in time (a long writer into an expiring partition): what
            # was done is committed whole; the next run goes on from there.
            log.warning("retention: %s left for the next run: %s", name,
                        str(exc.orig).strip() if exc.orig else exc)
            dropped[name] = []
    return dropped
