"""Partitions in tests: their bounds read from the catalog, empty ones dropped to be made again."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Engine, text

from shared.storage.partitions import KNOWN, QUOTES, ensure, existing_partitions


def ensure_quote_partitions(engine: Engine, *times: datetime | str) -> None:
    """The quotes partitions for rows at `times` (datetimes or ISO text), made as the batch
    writer makes them before it writes: for tests that insert quotes themselves."""
    moments = [t if isinstance(t, datetime) else datetime.fromisoformat(t) for t in times]
    ensure(engine, QUOTES, [(moment, moment) for moment in moments])


def partition_bounds(engine: Engine, table: str) -> list[tuple[datetime, datetime]]:
    """`table`'s partitions' [low, high) bounds, oldest first."""
    with engine.begin() as conn:
        return sorted(b for b in existing_partitions(conn, table).values() if b is not None)


def drop_partitions(engine: Engine, table: str, *, after: datetime | None = None,
                    before: datetime | None = None) -> list[str]:
    """Drop `table`'s partitions starting after `after` or ending by `before` (each must be
    empty); their names. This process's list of partitions is read again on next use."""
    with engine.begin() as conn:
        found = existing_partitions(conn, table)
        dropped = []
        for name, bounds in found.items():
            assert bounds is not None
            if (after and bounds[0] > after) or (before and bounds[1] <= before):
                assert conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one() == 0
                conn.execute(text(f'DROP TABLE "{name}"'))
                dropped.append(name)
    KNOWN.forget()
    return dropped


def drop_expirable_partitions(engine: Engine, before: datetime) -> None:
    """Empty partitions other tests left that retention would expire: the quotes' ending by
    `before` and every rollup partition (each must be empty)."""
    drop_partitions(engine, "quotes", before=before)
    for rollup in ("quotes_hourly", "quotes_daily"):
        drop_partitions(engine, rollup, before=datetime.max.replace(tzinfo=timezone.utc))
