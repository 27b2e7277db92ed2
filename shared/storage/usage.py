"""Storage in sight: bytes per table and partition, per quote, growth per day, days left.

Every figure is a catalog read (pg_class, pg_inherits, pg_total_relation_size: a stat of each
relation's files) or a read of the writers' counts and of `storage_samples`, never a scan of
the data, so /stats, /metrics and /status pay the same at any size. Growth comes from the
database's size sampled hourly by beat's maintenance (`maintain`); shared.notify.budget tells
the notification targets when fewer than STORAGE_ALERT_DAYS are left before the budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.storage import counters

# The tables whose bytes a quote costs: the series itself and the raw records it came from.
QUOTE_TABLES = ("quotes", "raw_line_blocks", "raw_item_blocks", "raw_records")
# Growth is measured over at least this long (a day smooths the schedule's hours), over the
# oldest sample there is while the history is shorter, but never over less than MIN_SPAN.
GROWTH_SPAN = timedelta(days=1)
MIN_SPAN = timedelta(hours=1)
SAMPLES_KEPT = timedelta(days=35)

# One row per table with storage: a partition under its parent's name, a plain table alone.
_RELATIONS_SQL = text("""
SELECT coalesce(p.relname, c.relname) AS tbl,
       CASE WHEN p.relname IS NULL THEN NULL ELSE c.relname END AS part,
       pg_total_relation_size(c.oid) AS bytes
FROM pg_class c
LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
LEFT JOIN pg_class p ON p.oid = i.inhparent
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'm')
ORDER BY 1, 2
""")
_NEWEST_SQL = text("SELECT sampled_at, database_bytes FROM storage_samples "
                   "ORDER BY sampled_at DESC LIMIT 1")
# The newest sample at least GROWTH_SPAN older, else the oldest one (primary-key probes).
_BASE_SQL = text("""
SELECT sampled_at, database_bytes FROM (
    (SELECT sampled_at, database_bytes, 0 AS pref FROM storage_samples
     WHERE sampled_at <= :before ORDER BY sampled_at DESC LIMIT 1)
    UNION ALL
    (SELECT sampled_at, database_bytes, 1 FROM storage_samples ORDER BY sampled_at LIMIT 1)
) s ORDER BY pref LIMIT 1
""")


@dataclass(frozen=True)
class Growth:
    """Bytes the database grew per day between two samples, and over how long."""

    bytes_per_day: float
    span_hours: float


def relation_bytes(session: Session) -> list[dict[str, Any]]:
    """Per table: its bytes (table, indexes, TOAST) and each partition's, largest first."""
    tables: dict[str, dict[str, Any]] = {}
    for table, part, size in session.execute(_RELATIONS_SQL).all():
        entry = tables.setdefault(table, {"table": table, "bytes": 0, "partitions": []})
        entry["bytes"] += int(size)
        if part is not None:
            entry["partitions"].append({"partition": part, "bytes": int(size)})
    for entry in tables.values():
        entry["partitions"].sort(key=lambda p: (-p["bytes"], p["partition"]))
    return sorted(tables.values(), key=lambda t: (-t["bytes"], t["table"]))


def growth(session: Session) -> Growth | None:
    """Growth per day from the samples (None before two samples MIN_SPAN apart)."""
    newest = session.execute(_NEWEST_SQL).first()
    if newest is None:
        return None
    base = session.execute(_BASE_SQL, {"before": newest.sampled_at - GROWTH_SPAN}).first()
    if base is None or newest.sampled_at - base.sampled_at < MIN_SPAN:
        return None
    span = newest.sampled_at - base.sampled_at
    days = span.total_seconds() / 86400
    return Growth((newest.database_bytes - base.database_bytes) / days,
                  round(span.total_seconds() / 3600, 1))


def days_left(used: int, budget: int, per_day: float | None) -> float | None:
    """Days until `used` reaches `budget` at `per_day` (None: not growing; 0: past it)."""
    if used >= budget:
        return 0.0
    if per_day is None or per_day <= 0:
        return None
    return round((budget - used) / per_day, 1)


def storage_figures(session: Session, settings: Settings,
                    kept: dict[str, dict[str, Decimal]] | None = None) -> dict[str, Any]:
    """What /stats, /metrics and /status show of storage (schema: api/schemas/stats.py);
    `kept` is counters.totals() when the caller has it."""
    used = int(session.scalar(text("SELECT pg_database_size(current_database())")) or 0)
    tables = relation_bytes(session)
    kept = counters.totals(session) if kept is None else kept
    quotes = int(sum(kept.get("quotes", {}).values()))
    quote_bytes = sum(t["bytes"] for t in tables if t["table"] in QUOTE_TABLES)
    grown = growth(session)
    per_day = grown.bytes_per_day if grown is not None else None
    return {
        "database_bytes": used,
        "budget_bytes": settings.storage_budget_bytes,
        "alert_days": settings.storage_alert_days,
        "bytes_per_quote": round(quote_bytes / quotes, 1) if quotes else None,
        "growth_bytes_per_day": round(per_day) if per_day is not None else None,
        "growth_span_hours": grown.span_hours if grown is not None else None,
        "days_left": days_left(used, settings.storage_budget_bytes, per_day),
        "tables": tables,
    }


def record_sample(session: Session, now: datetime) -> None:
    """Keep the database's size now; forget samples older than SAMPLES_KEPT."""
    session.execute(text(
        "INSERT INTO storage_samples (sampled_at, database_bytes) "
        "VALUES (:now, pg_database_size(current_database())) ON CONFLICT DO NOTHING"),
        {"now": now})
    session.execute(text("DELETE FROM storage_samples WHERE sampled_at < :old"),
                    {"old": now - SAMPLES_KEPT})


def maintain(session: Session, now: datetime) -> None:
    """Beat's hourly storage upkeep: fold the kept counts, sample the database's size
    (shared.notify.budget then checks the budget against the figures)."""
    counters.fold(session)
    record_sample(session, now)
