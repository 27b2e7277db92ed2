"""The history range cap with an open start: the span from an asset's first quote to `until`."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.config import SOURCES
from shared.models import Quote
from shared.queries import resolve_asset


def first_observed(session: Session, asset_id: int, source: str | None = None
                   ) -> datetime | None:
    """When the asset's first quote (at `source`, or at any source) was observed."""
    # One primary-key probe per source: min() over (asset_id, source, observed_at) with the
    # source fixed reads one index entry; across sources it would scan the asset's quotes.
    firsts = [
        session.scalar(select(func.min(Quote.observed_at))
                       .where(Quote.asset_id == asset_id, Quote.source == name))
        for name in ((source,) if source else SOURCES)
    ]
    known = [first for first in firsts if first is not None]
    return min(known) if known else None


def open_start_span(session: Session, ref: str, source: str | None, until: datetime
                    ) -> timedelta | None:
    """until minus the first quote of the asset named `ref` (NotFound if none is named so)."""
    first = first_observed(session, resolve_asset(session, ref).id, source)
    return until - first if first is not None else None
