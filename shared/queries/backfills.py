"""Read queries of backfills for the status page: the recent ones with chunk counts per state."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

RECENT_BACKFILLS = 5

_RECENT = text("""
SELECT b.id, b.status, jsonb_array_length(b.assets), b.since, b.until, b.created_at,
    b.finished_at, c.status, count(c.id), coalesce(sum(c.inserted), 0)
FROM (SELECT * FROM backfills ORDER BY (status IN ('queued', 'running')) DESC, id DESC
      LIMIT :n) b
LEFT JOIN backfill_chunks c ON c.backfill_id = b.id
GROUP BY b.id, b.status, b.assets, b.since, b.until, b.created_at, b.finished_at, c.status
ORDER BY (b.status IN ('queued', 'running')) DESC, b.id DESC
""")


@dataclass
class BackfillLine:
    """One backfill as the status page shows it."""

    id: int
    status: str
    coins: int
    since: datetime
    until: datetime
    created_at: datetime
    finished_at: datetime | None
    chunks: dict[str, int] = field(default_factory=dict)
    inserted: int = 0

    @property
    def total(self) -> int:
        """All chunks of the backfill."""
        return sum(self.chunks.values())


def recent_backfills(session: Session, limit: int = RECENT_BACKFILLS) -> list[BackfillLine]:
    """Active backfills first, then the latest, with their chunks counted per state."""
    lines: dict[int, BackfillLine] = {}
    for (bid, status, coins, since, until, created, finished, chunk_status, n,
         inserted) in session.execute(_RECENT, {"n": limit}):
        line = lines.setdefault(int(bid), BackfillLine(int(bid), status, int(coins), since,
                                                       until, created, finished))
        if chunk_status is not None:
            line.chunks[str(chunk_status)] = int(n)
            line.inserted += int(inserted)
    return list(lines.values())
