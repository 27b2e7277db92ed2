"""Read queries behind the API (kept here so the CLI and tests can call them too)."""
from __future__ import annotations

from typing import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import CurrentQuote


def list_current_quotes(
    session: Session,
    *,
    source: str | None = None,
    symbol: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[Sequence[CurrentQuote], int]:
    """One page of current quotes ordered by (asset_id, source), and the total count."""
    conditions = []
    if source:
        conditions.append(CurrentQuote.source == source)
    if symbol:
        conditions.append(CurrentQuote.symbol == symbol.strip().upper())
    total = session.scalar(select(func.count()).select_from(CurrentQuote).where(*conditions))
    rows = session.scalars(
        select(CurrentQuote).where(*conditions)
        .order_by(CurrentQuote.asset_id, CurrentQuote.source)
        .offset(offset).limit(limit)
    ).all()
    return rows, int(total or 0)
