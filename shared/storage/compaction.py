"""Closed quote partitions' keys packed: each one's primary key rebuilt full once writes end.

A tick inserts one quote per coin, each at the end of its coin's range in the primary key
(asset_id, source, observed_at): in the middle of the index, where a full leaf page splits in
half and its left half never receives another row. Over a week the key settles at about half
full (docs/benchmarks.md has the bytes). Once a partition's time is past (CLOSED_AFTER beyond
its upper bound), `compact` rebuilds its key with `REINDEX INDEX CONCURRENTLY`: readers and
writers go on, the rebuilt index replaces the old one in one step, and a comment on it says it
is done. The rebuild keeps btree's default 10% free in each leaf (fillfactor 90; 100 would save
~5 B a quote more): rows that still come for a closed time (a CSV history file appended to, a
backfill) land in that room instead of splitting every leaf they touch.

Beat's hourly maintenance calls it; it rebuilds at most `limit` partitions a run, oldest
first, so a deployment with a year of partitions catches up over hours, not in one long task.
A rebuild killed part way (a worker or server killed) leaves an invalid `..._ccnew` index;
the next run drops it before rebuilding. One run at a time per database: a session advisory
lock (shared.locks, COMPACTION), skipped when busy.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import Connection, Engine, text

from shared.locks import COMPACTION_LOCK, try_lock, unlock
from shared.storage.partitions import QUOTES, existing_partitions

log = logging.getLogger(__name__)

UTC = timezone.utc
# A partition is closed this long after its upper bound: late ticks and the writers'
# batches in flight have ended by then.
CLOSED_AFTER = timedelta(days=1)
# A rebuilt key's comment (set after the rebuild: a key whose rebuild was killed is done again).
PACKED_COMMENT = "packed by shared.storage.compaction"

# Each partition of quotes with its primary key's index, and whether that is packed already.
_KEYS = text("""
SELECT c.relname AS partition, i.relname AS key_index,
       coalesce(obj_description(i.oid, 'pg_class') = :packed, false) AS packed
FROM pg_inherits h
JOIN pg_class c ON c.oid = h.inhrelid
JOIN pg_index x ON x.indrelid = c.oid AND x.indisprimary
JOIN pg_class i ON i.oid = x.indexrelid
WHERE h.inhparent = CAST(:parent AS regclass)
""")
# Invalid indexes a killed REINDEX CONCURRENTLY left on quotes' partitions.
_LEFTOVERS = text("""
SELECT i.relname
FROM pg_inherits h
JOIN pg_index x ON x.indrelid = h.inhrelid AND NOT x.indisvalid
JOIN pg_class i ON i.oid = x.indexrelid
WHERE h.inhparent = CAST(:parent AS regclass) AND i.relname LIKE '%\\_ccnew%'
""")


def _leftovers(conn: Connection) -> list[str]:
    """Drop the invalid copies a killed rebuild left; their names."""
    names = list(conn.execute(_LEFTOVERS, {"parent": QUOTES.name}).scalars())
    for name in names:
        conn.execute(text(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"'))
        log.info("compaction: dropped %s, left by a rebuild that did not finish", name)
    return names


def due(conn: Connection, now: datetime) -> list[tuple[str, str]]:
    """(partition, index) of quotes' closed partitions whose key is not packed, oldest first."""
    bounds = existing_partitions(conn, QUOTES.name)
    closed = []
    for key in conn.execute(_KEYS, {"parent": QUOTES.name, "packed": PACKED_COMMENT}):
        span = bounds.get(key.partition)
        if not key.packed and span is not None and span[1] + CLOSED_AFTER <= now:
            closed.append((span, key.partition, key.key_index))
    return [(partition, index) for _, partition, index in sorted(closed)]


def compact(engine: Engine, now: datetime | None = None, limit: int = 1) -> list[str]:
    """Rebuild up to `limit` closed partitions' keys packed; the partitions rebuilt."""
    now = now or datetime.now(UTC)
    # REINDEX CONCURRENTLY and DROP INDEX CONCURRENTLY run outside a transaction block.
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        if not try_lock(conn, COMPACTION_LOCK):
            log.info("compaction: another run holds the lock, left for the next run")
            return []
        try:
            _leftovers(conn)
            done = []
            for partition, index in due(conn, now)[:limit]:
                conn.execute(text(f'REINDEX INDEX CONCURRENTLY "{index}"'))
                conn.execute(text(f"COMMENT ON INDEX \"{index}\" IS '{PACKED_COMMENT}'"))
                log.info("compaction: %s's key rebuilt packed", partition)
                done.append(partition)
            return done
        finally:
            unlock(conn, COMPACTION_LOCK)
    finally:
        conn.close()
