"""Counts kept by the writers (layer_counts) and hourly database sizes (storage_samples)."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.core import Base, UTCDateTime


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
