"""Exact counts kept by the writers (layer_counts): added per batch, folded, read in one scan.

Why: /stats, /metrics, /status and /health must cost the same at 1M and 100M quotes, so no
request counts a table that grows every day. Each writer inserts its deltas in its own
transaction (the batch writer: quotes and raw records; triggers of migration 0023: rejects,
anomalies, drift events and runs), so a count is exact the moment its rows commit. Deltas are
new rows, never an update of one row per figure, which concurrent batches would queue on;
`fold` (beat's hourly maintenance) collapses them to one row per (source, layer), so a read
sums at most an hour's rows.
"""
from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any, Mapping

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

_ADD_BATCH = (
    "INSERT INTO layer_counts (source, layer, n) "
    "SELECT %(source)s, c.layer, c.n FROM unnest(%(layers)s::text[], %(ns)s::numeric[]) "
    "AS c(layer, n) WHERE c.n <> 0"
)
# Concurrent folds are safe: a row another fold deleted first is skipped by this DELETE, so
# each delta is summed once; a reader sees the deltas or their sum, never both or neither.
_FOLD = text("""
WITH gone AS (DELETE FROM layer_counts RETURNING source, layer, n)
INSERT INTO layer_counts (source, layer, n)
SELECT source, layer, sum(n) FROM gone GROUP BY source, layer HAVING sum(n) <> 0
""")
_TOTALS = text("SELECT source, layer, sum(n) FROM layer_counts GROUP BY source, layer")
# What a dropped partition of each counted table held, per source (retention's drops).
_MEASURES = {
    "quotes": ("quotes", "count(*)"),
    "raw_line_blocks": ("raw", "sum(cardinality(line_numbers))"),
    "raw_item_blocks": ("raw", "sum(items)"),
}


def add_batch(cursor: Any, source: str, quotes: int, raw: int) -> None:
    """Add a batch's new quotes and raw records, in the batch's transaction (DB-API cursor)."""
    if quotes or raw:
        cursor.execute(_ADD_BATCH, {"source": source, "layers": ["quotes", "raw"],
                                    "ns": [quotes, raw]})


def fold(conn: Connection | Session) -> None:
    """Collapse the deltas to one row per (source, layer) (hourly; any time is safe)."""
    conn.execute(_FOLD)


def totals(conn: Connection | Session) -> dict[str, dict[str, Decimal]]:
    """layer -> source -> its count (or sum, e.g. seconds waited), as the writers kept it."""
    result: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for source, layer, n in conn.execute(_TOTALS).all():
        result[str(layer)][str(source)] = Decimal(n)
    return dict(result)


def subtract(conn: Connection | Session, layer: str, per_source: Mapping[str, int]) -> None:
    """Take rows that are gone off a layer's counts (in the transaction that removes them)."""
    for source, n in per_source.items():
        if n:
            conn.execute(text("INSERT INTO layer_counts (source, layer, n) VALUES (:s, :l, :n)"),
                         {"s": source, "l": layer, "n": -n})


def subtract_dropped(conn: Connection | Session, table: str, partition: str) -> None:
    """Before `partition` of `table` (quotes, raw_line_blocks, raw_item_blocks) is dropped:
    take what it holds off the counts. Call it in the transaction that drops it (retention),
    after detaching, so no writer adds to it meanwhile; it reads that partition only."""
    layer, measure = _MEASURES[table]
    rows = conn.execute(text(
        f'SELECT source, {measure} FROM "{partition}" GROUP BY source')).all()
    subtract(conn, layer, {str(source): int(n or 0) for source, n in rows})
