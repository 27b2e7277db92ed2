"""Bulk writes of one batch: COPY into staging, then INSERT ... ON CONFLICT, plus checkpoint."""
from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable, Sequence

from psycopg2.extras import Json, execute_values
from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.identity import Alias, IdentityHint, resolve_assets
from shared.records import Batch, content_hash


class CheckpointMoved(RuntimeError):
    """The checkpoint changed under us: another execution of this source committed first."""


@dataclass
class BatchResult:
    """What one batch did to the database."""

    fetched: int = 0
    raw_inserted: int = 0
    inserted: int = 0
    unchanged: int = 0
    rejected: int = 0


# Session-local staging tables: rows vanish at commit, the definitions stay for the
# connection's life so each batch pays only for COPY.
_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_raw (
    source_key text, content_hash bytea, payload text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_quotes (
    asset_id bigint, observed_at timestamptz, source_asset_id text,
    price_usd numeric, market_cap_usd numeric, volume_24h_usd numeric,
    circulating_supply numeric, total_supply numeric, max_supply numeric, rank integer,
    open_usd numeric, high_usd numeric, low_usd numeric, close_usd numeric, raw_hash bytea
) ON COMMIT DELETE ROWS;
"""

_QUOTE_COLUMNS = (
    "asset_id, observed_at, source_asset_id, price_usd, market_cap_usd, volume_24h_usd, "
    "circulating_supply, total_supply, max_supply, rank, open_usd, high_usd, low_usd, "
    "close_usd, raw_hash"
)

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _cell(value: Any) -> str:
    """One value in COPY text format (Decimal via str keeps every digit)."""
    if value is None:
        return "\\N"
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (Decimal, int)):
        return str(value)
    return str(value).translate(_COPY_ESCAPES)


def _copy(cursor: Any, table: str, columns: str, rows: Iterable[Sequence[Any]]) -> None:
    buffer = io.StringIO()
    for row in rows:
        buffer.write("\t".join(_cell(v) for v in row))
        buffer.write("\n")
    buffer.seek(0)
    cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN", buffer)


def write_batch(
    session: Session,
    source: str,
    run_id: int,
    batch: Batch,
    previous_checkpoint: dict[str, Any] | None,
    aliases: dict[tuple[str, str], Alias],
    asset_cache: dict[str, int],
) -> BatchResult:
    """Write a batch's raw rows, quotes, rejects and checkpoint in the caller's transaction."""
    result = BatchResult(fetched=len(batch.raw), rejected=len(batch.rejects))
    cursor = session.connection().connection.cursor()
    cursor.execute(_STAGING_DDL)

    if batch.raw:
        _copy(cursor, "stage_raw", "source_key, content_hash, payload",
              ((r.source_key, r.hash, r.payload) for r in batch.raw))
        cursor.execute(
            "INSERT INTO raw_records (source, source_key, content_hash, payload, run_id) "
            "SELECT DISTINCT ON (content_hash) %s, source_key, content_hash, payload, %s "
            "FROM stage_raw ON CONFLICT (source, content_hash) DO NOTHING",
            (source, run_id),
        )
        result.raw_inserted = cursor.rowcount

    if batch.quotes:
        hints = {q.source_asset_id: IdentityHint(q.source_asset_id, q.symbol, q.name)
                 for q in batch.quotes}
        assets = resolve_assets(session, source, list(hints.values()), aliases, asset_cache)
        _copy(cursor, "stage_quotes", _QUOTE_COLUMNS, (
            (assets[q.source_asset_id], q.observed_at, q.source_asset_id, q.price_usd,
             q.market_cap_usd, q.volume_24h_usd, q.circulating_supply, q.total_supply,
             q.max_supply, q.rank, q.open_usd, q.high_usd, q.low_usd, q.close_usd, q.raw_hash)
            for q in batch.quotes
        ))
        cursor.execute(
            f"INSERT INTO quotes (source, run_id, {_QUOTE_COLUMNS}) "
            f"SELECT %s, %s, {_QUOTE_COLUMNS} FROM stage_quotes "
            "ON CONFLICT (asset_id, source, observed_at) DO NOTHING",
            (source, run_id),
        )
        result.inserted = cursor.rowcount
        result.unchanged = len(batch.quotes) - result.inserted

    if batch.rejects:
        execute_values(
            cursor,
            "INSERT INTO rejected_records (source, location, reason, payload, content_hash, "
            "run_id) VALUES %s ON CONFLICT (source, location, content_hash) DO NOTHING",
            [(source, r.location, r.reason[:2000], r.payload,
              content_hash(source, r.location, r.payload), run_id) for r in batch.rejects],
        )

    if batch.drift:
        execute_values(
            cursor,
            "INSERT INTO drift_events (source, run_id, location, kind, field, observed, "
            "confidence, mapped, detail) VALUES %s",
            [(source, run_id, e.location, e.kind, e.field, e.observed,
              round(e.confidence, 3), e.mapped, e.detail[:2000]) for e in batch.drift],
        )

    save_checkpoint(cursor, source, batch.checkpoint_key, batch.checkpoint,
                    previous_checkpoint, run_id)
    cursor.execute(
        "UPDATE runs SET fetched = fetched + %s, inserted = inserted + %s, "
        "unchanged = unchanged + %s, rejected = rejected + %s, raw_inserted = raw_inserted + %s,"
        " heartbeat_at = now() WHERE id = %s",
        (result.fetched, result.inserted, result.unchanged, result.rejected,
         result.raw_inserted, run_id),
    )
    return result


def save_checkpoint(
    cursor: Any,
    source: str,
    key: str,
    value: dict[str, Any],
    previous: dict[str, Any] | None,
    run_id: int,
) -> None:
    """Compare-and-set the checkpoint: it moves only from the value this run started from."""
    if previous is None:
        cursor.execute(
            "INSERT INTO checkpoints (source, key, value, run_id, updated_at) "
            "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (source, key) DO NOTHING",
            (source, key, Json(value), run_id),
        )
    else:
        cursor.execute(
            "UPDATE checkpoints SET value = %s, run_id = %s, updated_at = now() "
            "WHERE source = %s AND key = %s AND value = %s",
            (Json(value), run_id, source, key, Json(previous)),
        )
    if cursor.rowcount != 1:
        raise CheckpointMoved(f"checkpoint {source}/{key} moved under run {run_id}")


def load_checkpoints(session: Session, source: str) -> dict[str, dict[str, Any]]:
    """All committed checkpoints of a source, key -> value."""
    rows = session.execute(
        text("SELECT key, value FROM checkpoints WHERE source = :s"), {"s": source}
    )
    return {key: value for key, value in rows}
