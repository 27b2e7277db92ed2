"""Time partitions of quotes and the raw blocks: which exist, and the missing ones created.

The tables are range-partitioned on their time column (migration 0018, docs/storage.md):
quotes on observed_at, raw_line_blocks and raw_item_blocks (0021) on fetched_at. There is no
DEFAULT partition (it would block `DETACH ... CONCURRENTLY` and make every new partition
scan it), so a row can only be written once the partition for its time exists. Partitions
come from three places, all through `create_missing`: the migration (the existing data's and
the next weeks'), beat's maintenance task (`maintain`: from now to each table's `ahead`), and
each batch the writer stores (`ensure_for_batch`: its quotes' times, reaching back to 2013 in
the CSV history files).

What one partition covers depends on where the time falls. Within RECENT of now (and in the
future) one unit of the table's grain: a week of quotes (the default schedule writes ~5.5M
quotes a day, ~38M a week) or a week of raw blocks (one row per batch or page). Older than that, a
calendar year: history is sparse (one row per coin per day) and every partition costs
planning time on each statement that reads the table without a time bound (docs/storage.md
has the figures), so 2013-2025 take 13 partitions, not 660 weeks. A new partition is clipped
to the gap between its existing neighbours, so partitions made at different times, by
different rules, never overlap.

A partition is created as a plain table, then attached: `ALTER TABLE ... ATTACH PARTITION`
takes SHARE UPDATE EXCLUSIVE on the parent, which neither readers nor writers conflict with,
where `CREATE TABLE ... PARTITION OF` takes ACCESS EXCLUSIVE: it would wait behind any open
batch transaction (in the pipeline, the batch that waits for this one: a deadlock PostgreSQL
cannot see) and stall every reader queued behind it. Both steps run in one short transaction
of their own under the table's advisory lock (shared.locks.partition_lock), which re-reads the
catalog, so concurrent writers never race; a kill at any point leaves either the whole
partition or nothing.
"""
from __future__ import annotations

import bisect
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Sequence

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from shared.batch.types import Batch
from shared.locks import lock_for_transaction, partition_lock

log = logging.getLogger(__name__)

UTC = timezone.utc
Bounds = tuple[datetime, datetime]  # [low, high): a partition's range
Span = tuple[datetime, datetime]  # [first, last]: times some rows have, both included

# Times within this of now get the table's grain; older ones a calendar year per partition.
RECENT = timedelta(days=365)
# How often beat makes the partitions ahead (worker/factory.py). With a unit or more ahead
# (PartitionedTable.ahead), a run finds nothing to do but at the turn of a week or month,
# and many missed runs in a row still leave writers a partition (they also make their own).
MAINTENANCE_SECONDS = 3600.0
# The most partitions one call creates. The widest honest need is a span from 2013 to now (13
# years, 53 weeks); thousands mean a bad timestamp (a coin dated 2099 in a span reaching
# from today), refused with a clear error instead of thousands of empty tables.
MAX_NEW_PARTITIONS = 200
# A per-process list of partitions is trusted this long: a partition dropped by someone else
# (retention) is noticed within this time.
CACHE_SECONDS = 300.0
# How long a creating transaction waits for a lock before the batch or task fails (and is
# retried): the parent's SHARE UPDATE EXCLUSIVE waits only for DDL and manual ANALYZE.
DDL_LOCK_TIMEOUT = "30s"
_MIN = datetime.min.replace(tzinfo=UTC)
_MAX = datetime.max.replace(tzinfo=UTC)


class TooManyPartitions(ValueError):
    """One call would create more than MAX_NEW_PARTITIONS partitions: the times are suspect."""


@dataclass(frozen=True)
class PartitionedTable:
    """A table partitioned by range on `column`, with `grain` (week, month) for recent times,
    and partitions kept from now to `ahead`: always past the next unit's start, never many
    empty ones (a statement with no time bound probes each of them, docs/storage.md)."""

    name: str
    column: str
    grain: str
    ahead: timedelta

    def partition_name(self, low: datetime, high: datetime) -> str:
        """The name of the partition [low, high): `quotes_p20261130_20261207`."""
        return f"{self.name}_p{low:%Y%m%d}_{high:%Y%m%d}"


QUOTES = PartitionedTable("quotes", "observed_at", "week", timedelta(days=8))
# Raw blocks by the week: retention keeps its horizon plus up to one partition, and at the
# default schedule a month of raw pages is ~30% of a 100 GB budget (docs/capacity.md).
# Earlier monthly partitions stay as they are; new weeks are clipped around them.
RAW_LINE_BLOCKS = PartitionedTable("raw_line_blocks", "fetched_at", "week", timedelta(days=8))
# API items, one row per fetched page (migration 0021): partitioned like the CSV lines' blocks.
RAW_ITEM_BLOCKS = PartitionedTable("raw_item_blocks", "fetched_at", "week", timedelta(days=8))
PARTITIONED_TABLES = (QUOTES, RAW_LINE_BLOCKS, RAW_ITEM_BLOCKS)
# Quote rollups (migration 0022): a month each within the last year (a year before it), made
# by the fold that writes into them (shared.storage.retention), so neither beat nor the writer
# makes theirs. Monthly, so QUOTES_HOURLY_DAYS drops hourly rows within a month of the
# horizon instead of keeping up to a year (docs/capacity.md).
QUOTES_HOURLY = PartitionedTable("quotes_hourly", "bucket_start", "month", timedelta(days=32))
QUOTES_DAILY = PartitionedTable("quotes_daily", "bucket_start", "month", timedelta(days=32))
ROLLUP_TABLES = (QUOTES_HOURLY, QUOTES_DAILY)
_PARTITION_NAME = re.compile(
    rf"^({'|'.join(t.name for t in PARTITIONED_TABLES + ROLLUP_TABLES)})_p\d{{8}}_\d{{8}}$")


def is_partition_name(name: str) -> bool:
    """Whether `name` is one of our partitions (autogenerate leaves them out of the models)."""
    return bool(_PARTITION_NAME.match(name))


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's include_name hook: partitions are made at run time, no model describes them."""
    return not (type_ == "table" and name is not None and is_partition_name(name))


def _floor(grain: str, moment: datetime) -> datetime:
    """The start of the `grain` unit (year, month, week from Monday; UTC) holding `moment`."""
    moment = moment.astimezone(UTC)
    if moment.year >= 9999:
        raise TooManyPartitions(f"time {moment.isoformat()} is past what a partition can hold")
    if grain == "year":
        return datetime(moment.year, 1, 1, tzinfo=UTC)
    if grain == "month":
        return datetime(moment.year, moment.month, 1, tzinfo=UTC)
    day = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    return day - timedelta(days=day.weekday())


def _next(grain: str, start: datetime) -> datetime:
    """The start of the unit after the one starting at `start`."""
    if grain == "year":
        return start.replace(year=start.year + 1)
    if grain == "month":
        return (start.replace(year=start.year + 1, month=1) if start.month == 12
                else start.replace(month=start.month + 1))
    return start + timedelta(days=7)


def unit(table: PartitionedTable, moment: datetime, now: datetime) -> Bounds:
    """The partition `moment` gets when none exists near it: its grain's unit when recent (or
    ahead), its calendar year (ending where recent times start) when older."""
    recent_start = _floor(table.grain, now - RECENT)
    if moment >= recent_start:
        low = _floor(table.grain, moment)
        return low, _next(table.grain, low)
    low = _floor("year", moment)
    return low, min(_next("year", low), recent_start)


def merge(spans: Iterable[Span]) -> list[Span]:
    """The spans' union as disjoint spans, oldest first."""
    merged: list[Span] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def plan(table: PartitionedTable, existing: Sequence[Bounds], spans: Iterable[Span],
         now: datetime) -> list[Bounds]:
    """The partitions to create so that every time in `spans` has one, given `existing`."""
    bounds = sorted(existing)
    lows = [low for low, _ in bounds]
    new: list[Bounds] = []
    for first, last in merge(spans):
        moment = first
        while moment <= last:
            i = bisect.bisect_right(lows, moment) - 1
            if i >= 0 and moment < bounds[i][1]:
                moment = bounds[i][1]  # covered: on to the first time after this partition
                continue
            low, high = unit(table, moment, now)
            # Clipped to the gap between the neighbours, so it never overlaps either.
            low = max(low, bounds[i][1] if i >= 0 else _MIN)
            high = min(high, bounds[i + 1][0] if i + 1 < len(bounds) else _MAX)
            new.append((low, high))
            if len(new) > MAX_NEW_PARTITIONS:
                raise TooManyPartitions(
                    f"{table.name}: {table.column} values from {first.isoformat()} to "
                    f"{last.isoformat()} need more than {MAX_NEW_PARTITIONS} new partitions; "
                    "check the source's timestamps")
            bounds.insert(i + 1, (low, high))
            lows.insert(i + 1, low)
            moment = high
    return new


# Each partition of the named parents with its bounds, cast back to timestamptz in SQL (so
# the session's TimeZone does not matter); a DEFAULT partition has neither bound.
_PARTITIONS = text("""
SELECT p.relname, c.relname, b.expr = 'DEFAULT',
       (regexp_match(b.expr, 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz,
       (regexp_match(b.expr, 'TO \\(''([^'']+)''\\)'))[1]::timestamptz
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent,
     LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS expr) b
WHERE i.inhparent = ANY(CAST(:parents AS regclass[]))
""")


def _read_partitions(conn: Connection, parents: Sequence[str]
                     ) -> dict[str, dict[str, Bounds | None]]:
    """Parent -> partition name -> bounds (None: DEFAULT), for each of `parents`, one query."""
    found: dict[str, dict[str, Bounds | None]] = {parent: {} for parent in parents}
    for parent, name, default, low, high in conn.execute(_PARTITIONS,
                                                         {"parents": list(parents)}):
        found[parent][name] = None if default else (
            _MIN if low is None else low.astimezone(UTC),
            _MAX if high is None else high.astimezone(UTC))
    return found


def existing_partitions(conn: Connection, parent: str) -> dict[str, Bounds | None]:
    """Name -> bounds of `parent`'s partitions (None: a DEFAULT partition, which we never make)."""
    return _read_partitions(conn, [parent])[parent]


def create_missing(conn: Connection, table: PartitionedTable, spans: Iterable[Span],
                   now: datetime | None = None, parent: str | None = None) -> list[str]:
    """Create, in the caller's transaction, the partitions `spans` lack; their names.

    Takes the table's advisory lock first and reads the catalog under it, so two callers never
    create the same partition. `parent`: the partitioned table to attach to when it is not
    (yet) named `table.name` (the migration builds it under another name).
    """
    now = now or datetime.now(UTC)
    parent = parent or table.name
    lock_for_transaction(conn, partition_lock(table.name))
    conn.execute(text(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'"))
    existing = [b for b in existing_partitions(conn, parent).values() if b is not None]
    created = []
    for low, high in plan(table, existing, spans, now):
        name = table.partition_name(low, high)
        # Without its indexes: ATTACH builds the parent's on the new, empty table.
        for statement in partition_ddl(conn, parent, name):
            conn.execute(text(statement))
        conn.execute(text(
            f'ALTER TABLE "{parent}" ATTACH PARTITION "{name}" '
            f"FOR VALUES FROM ('{low.isoformat()}') TO ('{high.isoformat()}')"))
        created.append(name)
    if created:
        log.info("created %d partition(s) of %s: %s", len(created), parent, ", ".join(created))
    return created


# The parent's columns, defaults, storage and CHECK constraints, for a partition's own DDL.
_COLUMNS = text("""
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid) AS default_expr, a.attcompression, a.attstorage,
       t.typstorage, t.typlen, t.typalign
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = CAST(:parent AS regclass) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
""")
_CHECKS = text("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
               "WHERE conrelid = CAST(:parent AS regclass) AND contype = 'c' ORDER BY conname")
# Fixed-width columns by alignment, widest first, then the variable-length ones.
_ALIGNMENT_ORDER = {"d": 0, "i": 1, "s": 2, "c": 3}
_COMPRESSION = {"p": "pglz", "l": "lz4"}
_STORAGE = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}


def partition_ddl(conn: Connection, parent: str, name: str) -> list[str]:
    """The statements that make `name` a plain table ready to attach to `parent`.

    The parent's columns (types, NOT NULL, defaults, compression, storage) and CHECK
    constraints, as `CREATE TABLE ... (LIKE parent ...)` would copy them, but in an order
    without alignment padding: 8-byte fixed-width columns first, then 4-, 2- and 1-byte ones,
    then the variable-length ones, each group in the parent's order. A partition may order its
    columns as it likes (tuple routing maps them by name); the parent's order, grown column by
    column over the migrations, left ~11 bytes of padding in a quote row (docs/storage.md).
    """
    columns = sorted(conn.execute(_COLUMNS, {"parent": parent}).all(),
                     key=lambda c: 4 if c.typlen < 0 else _ALIGNMENT_ORDER[c.typalign])
    parts = []
    for c in columns:
        part = f'"{c.attname}" {c.type}'
        if c.attcompression in _COMPRESSION:
            part += f" COMPRESSION {_COMPRESSION[c.attcompression]}"
        if c.attnotnull:
            part += " NOT NULL"
        if c.default_expr is not None:
            part += f" DEFAULT {c.default_expr}"
        parts.append(part)
    parts += [f'CONSTRAINT "{conname}" {definition}'
              for conname, definition in conn.execute(_CHECKS, {"parent": parent})]
    statements = [f'CREATE TABLE IF NOT EXISTS "{name}" ({", ".join(parts)})']
    statements += [f'ALTER TABLE "{name}" ALTER COLUMN "{c.attname}" SET STORAGE '
                   f"{_STORAGE[c.attstorage]}"
                   for c in columns if c.attstorage != c.typstorage]
    return statements


class _KnownPartitions:
    """Per process and database, every partitioned table's partitions as last read (one
    catalog query for them all; thread-safe: the pipeline's writers share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: dict[str, tuple[float, dict[str, list[Bounds]]]] = {}

    def get(self, engine: Engine, table: PartitionedTable, conn: Connection | None = None
            ) -> list[Bounds]:
        """The table's partitions, read again (on `conn` when given, a plain catalog read
        that takes no lock) when older than CACHE_SECONDS."""
        key = engine.url.render_as_string(hide_password=True)
        with self._lock:
            cached = self._read.get(key)
        if cached is None or time.monotonic() - cached[0] >= CACHE_SECONDS:
            names = [t.name for t in PARTITIONED_TABLES]
            if conn is not None:
                found = _read_partitions(conn, names)
            else:
                with engine.connect() as own:
                    found = _read_partitions(own, names)
            cached = (time.monotonic(), {parent: sorted(b for b in parts.values() if b)
                                         for parent, parts in found.items()})
            with self._lock:
                self._read[key] = cached
        return cached[1][table.name]

    def forget(self) -> None:
        """Read every table again on next use."""
        with self._lock:
            self._read.clear()


KNOWN = _KnownPartitions()


def ensure(engine: Engine, table: PartitionedTable, spans: Iterable[Span],
           now: datetime | None = None, conn: Connection | None = None) -> list[str]:
    """Make sure every time in `spans` has a partition; the names of those created.

    Free when the process already knows them (the usual case: one bisect per span; `conn`, the
    caller's connection, reads the catalog when the list is stale); else one short transaction
    of its own on another connection, whatever the caller's transaction is doing.
    """
    now = now or datetime.now(UTC)
    spans = list(spans)
    if not spans or not plan(table, KNOWN.get(engine, table, conn), spans, now):
        return []
    with engine.begin() as conn:
        created = create_missing(conn, table, spans, now)
    KNOWN.forget()
    return created


def _time(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _spans_of(batch: Batch) -> list[Span]:
    """The batch's quote times as spans (per asset once prepared, else per block or quote)."""
    if batch.prepared is not None:
        texts = set(batch.prepared.spans.values())
    else:
        texts = {(min(b.stamps), max(b.stamps)) for b in batch.quote_blocks if b.stamps}
    spans = [(_time(first), _time(last)) for first, last in texts]
    if batch.prepared is None:
        spans += [(q.observed_at, q.observed_at) for q in batch.quotes]
    return spans


def ensure_for_batch(session: Session, batch: Batch) -> None:
    """The batch writer's one call: partitions for the batch's quotes and its raw rows (now)."""
    conn = session.connection()
    engine = conn.engine
    now = datetime.now(UTC)
    ensure(engine, QUOTES, _spans_of(batch), now, conn)
    # Raw blocks take now() of their transaction, which may have begun a moment before.
    for raw in (RAW_LINE_BLOCKS, RAW_ITEM_BLOCKS):
        ensure(engine, raw, [(now - timedelta(days=1), now + timedelta(days=1))], now, conn)


def maintain(engine: Engine, now: datetime | None = None) -> dict[str, list[str]]:
    """Beat's upkeep: every partitioned table's partitions from now to its `ahead`, one
    transaction per table; the names created, by table."""
    now = now or datetime.now(UTC)
    created: dict[str, list[str]] = {}
    for table in PARTITIONED_TABLES:
        with engine.begin() as conn:
            spans = [(now, now + table.ahead)]
            created[table.name] = create_missing(conn, table, spans, now)
    KNOWN.forget()
    return created
