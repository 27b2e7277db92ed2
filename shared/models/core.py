"""SQLAlchemy 2.0 models: raw layer, canonical assets, quotes, jobs, runs, checkpoints, rejects."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names so that autogenerate and hand-written migrations agree.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUN_STATUSES = ("queued", "running", "succeeded", "partial", "failed", "skipped")
TERMINAL_STATUSES = ("succeeded", "partial", "failed", "skipped")
# What a run executes (migration 0017): `extract`, its source's current data through the
# etl.extract.<source> task; `backfill`, a backfill's historical windows (shared.backfill).
RUN_KINDS = ("extract", "backfill")
# A run's counters, only ever added to: the first five by its batches (the batch writer's
# BatchResult), the rest by its HTTP client's events. Every list of them derives from these.
RUN_LOAD_COUNTERS = ("fetched", "inserted", "unchanged", "rejected", "raw_inserted")
RUN_HTTP_COUNTERS = ("http_requests", "http_retries", "rate_limit_waits",
                     "rate_limit_wait_seconds")
RUN_COUNTERS = RUN_LOAD_COUNTERS + RUN_HTTP_COUNTERS

UTCDateTime = DateTime(timezone=True)


class Base(DeclarativeBase):
    """Declarative base bound to our naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Asset(Base):
    """One real-world coin, whatever source it was seen in."""

    __tablename__ = "assets"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    symbol: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())

    source_ids: Mapped[list[AssetSourceId]] = relationship(back_populates="asset")


class AssetSourceId(Base):
    """Maps a source's own id (`bitcoin`, `btc-bitcoin`, `BTC/Bitcoin`) to a canonical asset."""

    __tablename__ = "asset_source_ids"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    source_asset_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id"), index=True)
    symbol: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(300))
    matched_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())

    asset: Mapped[Asset] = relationship(back_populates="source_ids")


class RawItemBlock(Base):
    """The raw items of one fetched page of an API source, exactly as received, in one row.

    One row per page instead of per item (migration 0021): a row per item cost ~1,300 B on
    disk, its JSON too small for TOAST to compress; a page's items compress together.
    `payload` holds the texts (shared.batch.item_texts: bzip2), `source_keys` and `item_hashes`
    (32 bytes of SHA-256 per item; quotes.raw_hash holds the first 8) run in the same order,
    `items` long. Ids as for raw lines: block id * 2^20 + index in the block
    (RAW_LINE_ID_BITS); the view `raw_items` shows one row per item (without its text). Which
    items are stored: shared.ingest.item_blocks. Block ids come from raw_line_blocks'
    sequence, so one record id never names records of two sources.
    """

    __tablename__ = "raw_item_blocks"
    __table_args__ = (
        CheckConstraint("cardinality(source_keys) = items "
                        "AND octet_length(item_hashes) = 32 * items", name="one_per_item"),
        Index("ix_raw_item_blocks_source_id", "source", "id"),
        Index("ix_raw_item_blocks_run_id", "run_id"),
        {"postgresql_partition_by": "RANGE (fetched_at)"},
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(32))
    items: Mapped[int] = mapped_column(Integer)
    source_keys: Mapped[list[str]] = mapped_column(ARRAY(Text))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    item_hashes: Mapped[bytes] = mapped_column(LargeBinary)
    # Not a foreign key: a per-row check costs more than the COPY of the row, the loader
    # takes the id from the run it executes, and runs are never deleted (migration 0003).
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True,
                                                 server_default=func.now())


class RawLineBlock(Base):
    """The raw lines of one batch of a line source (CSV), exactly as read, in one row.

    One row per batch instead of per line (migration 0006): a row per line cost as much as a
    bare COPY of the whole file, mostly in index and sequence upkeep. `payload` is the lines
    joined by newlines; `line_numbers` and `line_hashes` (32 bytes of SHA-256 per line) run in
    the same order. The view `raw_lines` shows one row per line, with the id GET
    /raw/<source>/<id> uses: block id * 2^20 + index in the block (RAW_LINE_ID_BITS).
    Partitioned by fetched_at (migration 0018, shared.storage.partitions), so the key holds
    fetched_at too; ids stay unique through their sequence.
    """

    __tablename__ = "raw_line_blocks"
    __table_args__ = (
        CheckConstraint("octet_length(line_hashes) = 32 * cardinality(line_numbers)",
                        name="hash_per_line"),
        {"postgresql_partition_by": "RANGE (fetched_at)"},
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(32))
    file_key: Mapped[str] = mapped_column(Text)
    line_numbers: Mapped[list[int]] = mapped_column(ARRAY(Integer))
    payload: Mapped[str] = mapped_column(Text)
    line_hashes: Mapped[bytes] = mapped_column(LargeBinary)
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True,
                                                 server_default=func.now())


# A raw line's id is its block id shifted by this many bits plus its index in the block, so
# a block holds at most 2^20 lines (CSV_BATCH_ROWS is bounded below that).
RAW_LINE_ID_BITS = 20
# Sources whose raw records are lines kept in raw_line_blocks (the others: raw_item_blocks).
LINE_SOURCES = frozenset({"csv"})


class Quote(Base):
    """One observation of an asset at one source and time, with exact decimals.

    Partitioned by observed_at (migration 0018, shared.storage.partitions): the key holds the
    time (as TimescaleDB wants) and asset_id (as Citus distribution wants), docs/storage.md.
    """

    __tablename__ = "quotes"
    __table_args__ = {"postgresql_partition_by": "RANGE (observed_at)"}

    # asset_id and run_id are not foreign keys, for the reason given at RawItemBlock.run_id; the
    # loader takes asset ids from asset_source_ids (which has the foreign key) in the same
    # transaction, and assets are never deleted. run_id has no index: no query selects by it
    # (each batch publishes its own assets through the primary key).
    asset_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    source_asset_id: Mapped[str] = mapped_column(String(300))
    price_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    market_cap_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    volume_24h_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    circulating_supply: Mapped[Decimal | None] = mapped_column(Numeric)
    total_supply: Mapped[Decimal | None] = mapped_column(Numeric)
    max_supply: Mapped[Decimal | None] = mapped_column(Numeric)
    rank: Mapped[int | None] = mapped_column(Integer)
    open_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    high_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    low_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    close_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    # The first 8 bytes of the raw record's SHA-256 (shared.batch.copy_format.QUOTE_HASH_BYTES;
    # rows written before migration 0024 hold all 32): which raw record the quote came from.
    raw_hash: Mapped[bytes | None] = mapped_column(LargeBinary)
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    # No longer filled (migration 0024: NULL takes no bytes; a run's times are in runs). Kept
    # for the previous release's code during a rolling update; a later release drops it.
    inserted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The batch checks' flags in stored form (migration 0019, shared.quality.compact): the
    # flag set of its kinds, and a jump's base quote (price, and how many microseconds older).
    # NULL when clean; no foreign key, for the reason given at run_id.
    flag_set: Mapped[int | None] = mapped_column(BigInteger)
    jump_base_price: Mapped[float | None] = mapped_column(Double)
    jump_base_us: Mapped[int | None] = mapped_column(BigInteger)


class CurrentQuote(Base):
    """The newest quote per (asset, source): what `GET /data` serves, refreshed per batch.

    Its pages are kept half empty (fillfactor 50, migration 0008) so that a publish updates
    rows in place, without new index entries.
    """

    __tablename__ = "current_quotes"
    __table_args__ = (
        Index("ix_current_quotes_symbol", "symbol", "source", "asset_id"),
        Index("ix_current_quotes_source", "source", "asset_id"),
    )

    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id"), primary_key=True)
    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(300))
    source_asset_id: Mapped[str] = mapped_column(String(300))
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    price_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    market_cap_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    volume_24h_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    rank: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    # NULL for a clean quote; else {"status": ..., "flags": [...]} from shared.quality.checks
    # (0011).
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class QuoteFlag(Base):
    """Flag documents of one quote: outliers, and flags its stored form cannot rebuild."""

    __tablename__ = "quote_flags"

    asset_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    flags: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class Anomaly(Base):
    """A run or data anomaly with its evidence, reported once per (kind, source, key)."""

    __tablename__ = "anomalies"
    __table_args__ = (
        UniqueConstraint("kind", "source", "key"),
        Index("ix_anomalies_source_created", "source", "created_at"),
        Index("ix_anomalies_created", "created_at"),
        Index("ix_anomalies_asset", "asset_id", "id",
              postgresql_where=text("asset_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(32))
    # What the anomaly is about ("run:42", "quote:7:2025-01-01T00:00:00+00:00"): the dedupe key.
    key: Mapped[str] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    observed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    # The asset of a data anomaly, read off its key (migration 0016); None for run anomalies.
    asset_id: Mapped[int | None] = mapped_column(BigInteger, Computed(
        "CASE WHEN key ~ '^quote:[0-9]{1,18}:' THEN split_part(key, ':', 2)::bigint END",
        persisted=True))


class DataVersion(Base):
    """One row whose `version` changes in every transaction that changes current_quotes.

    A statement-level trigger on current_quotes sets it from a sequence (migration 0004), so a
    value is never reused; the API keys its per-process /data cache by it.
    """

    __tablename__ = "data_version"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class Job(Base):
    """A request to run some sources once, then normalize: one run per source."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued','running','succeeded','partial','failed','skipped')",
            name="status",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), server_default="queued")
    sources: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    trigger: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    runs: Mapped[list[Run]] = relationship(back_populates="job", order_by="Run.id")


class Run(Base):
    """One source's part of a job: kind, status, timings, counts, error, Celery task id."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued','running','succeeded','partial','failed','skipped')",
            name="status",
        ),
        CheckConstraint("kind IN ('extract','backfill')", name="kind"),
        UniqueConstraint("job_id", "source"),
        # At most one run per source and kind may be active: beat, POST /jobs and
        # redeliveries all meet here, whatever raced to start; a backfill of the source
        # runs beside them (shared.locks.run_lock takes the same pair).
        Index(
            "uq_runs_one_running_per_source_kind",
            "source",
            "kind",
            unique=True,
            postgresql_where=text("status = 'running'"),
        ),
        Index("ix_runs_source_status", "source", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16), server_default="extract")
    status: Mapped[str] = mapped_column(String(16), server_default="queued")
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    fetched: Mapped[int] = mapped_column(BigInteger, server_default="0")
    inserted: Mapped[int] = mapped_column(BigInteger, server_default="0")
    unchanged: Mapped[int] = mapped_column(BigInteger, server_default="0")
    rejected: Mapped[int] = mapped_column(BigInteger, server_default="0")
    raw_inserted: Mapped[int] = mapped_column(BigInteger, server_default="0")
    http_requests: Mapped[int] = mapped_column(Integer, server_default="0")
    http_retries: Mapped[int] = mapped_column(Integer, server_default="0")
    rate_limit_waits: Mapped[int] = mapped_column(Integer, server_default="0")
    rate_limit_wait_seconds: Mapped[Decimal] = mapped_column(Numeric(12, 3), server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    job: Mapped[Job] = relationship(back_populates="runs")


class Checkpoint(Base):
    """A source's cursor (CSV file fingerprint + offset, API page), advanced with its data."""

    __tablename__ = "checkpoints"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSONB)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class RejectedRecord(Base):
    """A record we could not use, kept with where it came from and why."""

    __tablename__ = "rejected_records"
    __table_args__ = (UniqueConstraint("source", "location", "content_hash"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(32), index=True)
    location: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[bytes] = mapped_column(LargeBinary)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class DriftEvent(Base):
    """A change of an upstream's shape: what changed, how sure we are, whether we mapped it."""

    __tablename__ = "drift_events"
    __table_args__ = (Index("ix_drift_events_source_created", "source", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    location: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    field: Mapped[str] = mapped_column(Text)
    observed: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[Decimal] = mapped_column(Numeric(4, 3))
    mapped: Mapped[bool] = mapped_column()
    detail: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class AlertState(Base):
    """Per source, the state last notified about (shared.notify dedupes against it)."""

    __tablename__ = "alert_states"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default="0")
    escalated: Mapped[bool] = mapped_column(server_default=text("false"))
    last_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class Notification(Base):
    """One message to one target (named, never its URL): what, why, and whether it went out."""

    __tablename__ = "notifications"
    __table_args__ = (
        CheckConstraint("status IN ('pending','sent','failed')", name="status"),
        Index("ix_notifications_created", "created_at"),
        Index("ix_notifications_source_created", "source", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default="0")
    detail: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
