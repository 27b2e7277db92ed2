"""Quote rollups (migration 0022): hourly and daily OHLC rows, the horizons and fold markers."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Integer, Numeric, String, func
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.core import Base, UTCDateTime


class _Rollup:
    """One bucket of an asset's quotes at one source, with the candles' convention
    (shared.queries.candles): open/close the first/last price by time, high/low max/min,
    volume and market cap those of the bucket's last quote, `quotes` the rows folded in."""

    asset_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    source_asset_id: Mapped[str | None] = mapped_column(String(300))
    open_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    high_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    low_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    close_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    volume_24h_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    market_cap_usd: Mapped[Decimal | None] = mapped_column(Numeric)
    quotes: Mapped[int] = mapped_column(Integer)
    first_observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_observed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class QuoteHourly(_Rollup, Base):
    """Quotes past QUOTES_FULL_RESOLUTION_DAYS, an hour per row; partitioned by year."""

    __tablename__ = "quotes_hourly"
    __table_args__ = {"postgresql_partition_by": "RANGE (bucket_start)"}


class QuoteDaily(_Rollup, Base):
    """Hourly rollups past QUOTES_HOURLY_DAYS, a UTC day per row; partitioned by year."""

    __tablename__ = "quotes_daily"
    __table_args__ = {"postgresql_partition_by": "RANGE (bucket_start)"}


class RetentionHorizon(Base):
    """Where a table's rows start: `quotes` (full resolution from `horizon` on; the hourly
    rollups before it) and `quotes_hourly` (hourly from here; daily before). No row: nothing
    expired yet."""

    __tablename__ = "retention_horizons"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    horizon: Mapped[datetime] = mapped_column(UTCDateTime)


class RollupFold(Base):
    """A partition folded into its rollup and not yet dropped (shared.storage.retention):
    its table's oid, so a run after a crash folds it again in place, never on top."""

    __tablename__ = "rollup_folds"

    relid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    # The rows folded (quotes; for an hourly partition the quotes its rows hold): the same
    # count after the detach spares the second fold.
    rows: Mapped[int] = mapped_column(BigInteger)
    folded_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
