"""The flag sets of the batch checks' flags (migration 0019): one row per run, kinds and clock."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, SmallInteger, String, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.core import Base, UTCDateTime


class FlagSet(Base):
    """What one run's batch checks flagged with (migration 0019): kinds, limits, page clock.

    Quotes flagged alike by a run share one row (quotes.flag_set); shared.quality.compact
    rebuilds each quote's flags from it and the quote's own values.
    """

    __tablename__ = "flag_sets"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    # Bits of shared.quality.compact.KIND_BITS.
    kinds: Mapped[int] = mapped_column(SmallInteger)
    # The page clock `stale` was judged against (sets holding `stale` only).
    fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # Quotes stored with this set (each batch adds the ones it inserted).
    quotes: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
