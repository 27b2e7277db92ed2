"""Counts kept by the writers (layer_counts) and hourly database sizes (storage_samples)."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Index, Numeric, String, text
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.core import Base, Run, UTCDateTime


class LayerCount(Base):
    """A change of one figure of one source (migration 0023; shared.storage.counters).

    The writers insert deltas in their own transactions (a row per batch or statement, never an
    update of one shared row, which concurrent batches would queue on); a figure is the sum of
    its rows, which the hourly fold collapses to one row per (source, layer).
    """

    __tablename__ = "layer_counts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    # e.g. quotes, raw, rejected, anomaly:<kind>, drift:mapped, runs:<kind>:<status>
    layer: Mapped[str] = mapped_column(String(64))
    # Numeric: exact for counts and for the seconds some figures sum.
    n: Mapped[Decimal] = mapped_column(Numeric)


class StorageSample(Base):
    """The database's size at one time (beat's hourly maintenance): growth per day."""

    __tablename__ = "storage_samples"

    sampled_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    database_bytes: Mapped[int] = mapped_column(BigInteger)


# Indexes of runs for the reads that must not grow with history (migration 0023): a source's
# newest runs (shared.queries.freshness, the status page's trends), its newest errors, and
# the last day's runs (the status page's timeline). Declared here, beside the counts they
# serve, on Run's table.
RUN_INDEXES = (
    Index("ix_runs_source_created", Run.__table__.c.source, Run.__table__.c.created_at),
    Index("ix_runs_source_errors", Run.__table__.c.source, Run.__table__.c.created_at,
          postgresql_where=text("error IS NOT NULL")),
    Index("ix_runs_created", Run.__table__.c.created_at),
)
