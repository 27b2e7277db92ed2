"""Bulk writes of one batch: COPY straight into the tables, via staging when rows repeat.

Raw records are stored one block per batch, with no index on their hashes: CSV lines in
raw_line_blocks (migration 0006, shared.ingest.line_blocks), API items in raw_item_blocks
(migration 0021, shared.ingest.item_blocks). When records repeat (a replaced file, an API
item fetched again) their quotes collide on the quotes' primary key, which says whether the
identical record is stored already (quotes.raw_hash).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from psycopg2 import errors as pg_errors
from psycopg2.extras import Json, execute_values
from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from shared.batch.copy_format import (
    ASSET_SLOT,
    COPY_CHUNK_BYTES,
    QUOTE_COLUMNS_SQL,
    STAGE_QUOTES,
    STAGING_DDL,
    quote_line,
    block_copy_text,
)
from shared.db import unit_of_work
from shared.identity.resolve import Alias, IdentityHint, resolve_assets
from shared.ingest.item_blocks import StoredItems, copy_item_block, repeated_reject_payloads
from shared.ingest.line_blocks import StoredLines, copy_line_block
from shared.ingest.publish import PUBLISH_BATCH_SQL
from shared.jobs.lifecycle import BATCH_PROGRESS_SQL
from shared.models import RUN_LOAD_COUNTERS
from shared.quality.checks import JUMP, QualityThresholds
from shared.quality.compact import KIND_BITS, new_flag_set
from shared.quality.flags import (
    BatchQuality,
    FlagWrites,
    SetKey,
    batch_flags,
    block_cells,
    flag_writes,
    store_batch_flags,
)
from shared.quality.outliers import apply_outliers
from shared.storage.counters import add_batch
from shared.storage.partitions import ensure_for_batch
from shared.batch.types import Batch, PreparedQuotes, QuoteBlock, content_hash


class CheckpointMoved(RuntimeError):
    """The checkpoint changed under us: another execution of this source committed first."""


@dataclass
class BatchResult:
    """What one batch did to the database: one field per run load counter (RUN_LOAD_COUNTERS)."""

    fetched: int = 0
    raw_inserted: int = 0
    inserted: int = 0
    unchanged: int = 0
    rejected: int = 0


@dataclass
class LoadState:
    """What a run's loader remembers between its batches."""

    # Tables whose straight COPY failed on a stored row although the probe said none could
    # (a race the probe cannot see): later batches of the run go through staging.
    always_stage: set[str] = field(default_factory=set)


# The staged quotes not stored yet; per flag set (NULL: clean), how many went in.
_QUOTES_FROM_STAGING = (
    f"WITH new AS (INSERT INTO quotes ({QUOTE_COLUMNS_SQL}) SELECT {QUOTE_COLUMNS_SQL} "
    f"FROM {STAGE_QUOTES} ON CONFLICT (asset_id, source, observed_at) DO NOTHING "
    "RETURNING flag_set) SELECT flag_set, count(*) FROM new GROUP BY flag_set"
)


def _reader(data: str | bytes) -> io.StringIO | io.BytesIO:
    return io.BytesIO(data) if isinstance(data, bytes) else io.StringIO(data)


def _copy_new_rows(
    cursor: Any, state: LoadState, table: str, columns: str, data: str | bytes, staging: str,
    from_staging: str, on_staged: Callable[[Any], None] | None = None, stage: bool = False,
    inserted: Callable[[Any], int] | None = None,
) -> int:
    """Load COPY text into `table`; returns how many rows were new.

    `stage` says the rows may exist already (the caller decided it up front, so that an
    unchanged re-run never makes PostgreSQL log a failed statement): they go through a
    staging table and INSERT ... ON CONFLICT DO NOTHING, which skips exactly the stored ones.
    Otherwise COPY goes straight into the table, the fast path, safe because the table's
    unique index checks every row: should one exist after all, the COPY fails as a whole, is
    rolled back to its savepoint and goes through staging. `on_staged(cursor)` runs between
    the staging COPY and that INSERT, while the table still holds only the earlier rows;
    `inserted(cursor)`, when given, reads the INSERT's answer: how many rows went in.
    """
    if not stage and table not in state.always_stage:
        try:
            # The savepoint and the COPY in one round trip: libpq runs the statements before
            # a COPY in the same string, then streams the data. The savepoint is not
            # released (another round trip): it ends with the transaction, and a later one
            # of the same name shadows it. Each round trip saved matters here: its answer
            # can wait a whole GIL switch interval while the read-ahead thread parses.
            cursor.copy_expert(f"SAVEPOINT bulk_copy; COPY {table} ({columns}) FROM STDIN",
                               _reader(data), COPY_CHUNK_BYTES)
        except pg_errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT bulk_copy")
            state.always_stage.add(table)
        else:
            return int(cursor.rowcount)
    cursor.execute(STAGING_DDL)
    cursor.copy_expert(f"COPY {staging} ({columns}) FROM STDIN", _reader(data),
                       COPY_CHUNK_BYTES)
    if on_staged is not None:
        on_staged(cursor)
    cursor.execute(from_staging)
    return inserted(cursor) if inserted is not None else int(cursor.rowcount)


@dataclass
class BatchWriter:
    """Writes one run's batches: what every batch of the run shares, held once.

    `aliases` and `asset_cache` resolve the source's coin ids to assets (shared.identity.resolve);
    the cache fills as batches meet new coins. `thresholds` are the quality checks' limits
    (shared.quality.flags: flags stored with the quotes, outliers judged after publishing).
    """

    source: str
    run_id: int
    aliases: dict[tuple[str, str], Alias]
    asset_cache: dict[str, int] = field(default_factory=dict)
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    # The run's flag sets (shared.quality.compact), by kinds and page clock: their ids.
    flag_sets: dict[SetKey, int] = field(default_factory=dict)
    # ISO stamps of the run's quotes as microseconds (for their jump bases' ages).
    stamp_micros: dict[str, int] = field(default_factory=dict)
    # The API items the run knows are stored (shared.ingest.item_blocks).
    stored_items: StoredItems = field(default_factory=StoredItems)

    def write(
        self,
        session: Session,
        batch: Batch,
        previous_checkpoint: dict[str, Any] | None,
        state: LoadState | None = None,
        wait_turn: Callable[[], None] | None = None,
    ) -> BatchResult:
        """Write a batch's raw rows, quotes, rejects and checkpoint in the caller's transaction.

        The rows only this batch can hold come first (quotes, rejects, raw blocks);
        `wait_turn()`, when given, is called after them and before anything another in-flight
        batch may also touch (current_quotes, the checkpoint, the run's counters), so that two
        batches can be written at once on two connections and still commit in order
        (shared.ingest.pipeline).
        """
        state = state if state is not None else LoadState()
        # Partitions for the batch's times (old history too), in a transaction of their own.
        ensure_for_batch(session, batch)
        result = BatchResult(fetched=batch.raw_count, rejected=len(batch.rejects))
        cursor = session.connection().connection.cursor()
        # Which of this batch's lines or API items are stored already.
        stored_lines = StoredLines(self.source, batch.checkpoint_key)
        stored_items = self.stored_items
        prepared = batch.prepared
        if batch.quote_count:
            if prepared is None:
                prepared = self._render_quotes(session, batch)
            result.inserted = self._write_quotes(
                cursor, state, prepared, stored_lines.find if batch.raw_lines is not None
                else stored_items.find if batch.raw else None)
            result.unchanged = batch.quote_count - result.inserted
            store_batch_flags(cursor, self.source, self.run_id, prepared.writes)
        repeated_rejects = self._write_rejects(cursor, batch) if batch.rejects else set()
        if batch.raw_lines is not None:
            result.raw_inserted = copy_line_block(cursor, self.source, self.run_id,
                                                  batch.raw_lines, stored_lines.hashes,
                                                  repeated_rejects)
        if batch.raw:
            result.raw_inserted = copy_item_block(
                cursor, self.source, self.run_id, batch.raw, stored_items,
                repeated_reject_payloads(batch.rejects, repeated_rejects))
        if wait_turn is not None:
            wait_turn()
        if batch.drift:
            self._write_drift(cursor, batch)
        _end_batch(cursor, self.source, self.run_id, batch, previous_checkpoint, prepared,
                   result)
        # The exact counts /stats serves, kept in this transaction (shared.storage.counters).
        add_batch(cursor, self.source, result.inserted, result.raw_inserted)
        if result.inserted and prepared is not None and prepared.outlier_assets:
            apply_outliers(session, cursor, prepared.outlier_assets, self.thresholds)
        return result

    def prepare(self, engine: Engine, batch: Batch) -> Batch:
        """Resolve identities and render quotes ahead of `write` (the read-ahead thread).

        Identity gets its own committed transaction here: new assets and mappings are valid
        whether or not the batch's data commits later (a retry finds and reuses them), and
        doing this beside the previous batch's COPY takes it off the critical path (~1 s and
        ~0.3 s of rendering per million CSV lines).
        """
        if batch.quote_count:
            with unit_of_work(engine) as session:
                batch.prepared = self._render_quotes(session, batch)
            # The rendered data replaces the blocks' text: drop it now, not when the batch is
            # written (several batches wait in memory while two are written). Built directly:
            # dataclasses.replace costs ~8 us a block, and an append has a block per coin.
            batch.quote_blocks = [QuoteBlock(b.source_asset_id, b.symbol, b.name, "", b.rows)
                                  for b in batch.quote_blocks]
        return batch

    def _write_quotes(
        self, cursor: Any, state: LoadState, prepared: PreparedQuotes,
        on_staged: Callable[[Any], None] | None,
    ) -> int:
        """The batch's quotes; returns how many were new (staged only if keys may repeat)."""
        writes = prepared.writes

        def inserted(cur: Any) -> int:
            # Only the quotes that went in count for their flag sets.
            counts = {set_id: int(n) for set_id, n in cur.fetchall()}
            if isinstance(writes, FlagWrites):
                writes.set_counts = {k: n for k, n in counts.items() if k is not None}
            return sum(counts.values())

        return _copy_new_rows(
            cursor, state, "quotes", QUOTE_COLUMNS_SQL, prepared.data, STAGE_QUOTES,
            _QUOTES_FROM_STAGING,
            on_staged=on_staged,
            stage=_may_hold_keys(cursor, self.source, prepared), inserted=inserted)

    def _write_rejects(self, cursor: Any, batch: Batch) -> set[str]:
        """Store the rejects; returns the locations rejected before with the same text."""
        source, run_id = self.source, self.run_id
        new_locations = execute_values(
            cursor,
            "INSERT INTO rejected_records (source, location, reason, payload, content_hash, "
            "run_id) VALUES %s ON CONFLICT (source, location, content_hash) DO NOTHING "
            "RETURNING location",
            [(source, r.location, r.reason[:2000], r.payload,
              content_hash(source, r.location, r.payload), run_id) for r in batch.rejects],
            fetch=True,
        )
        # A line rejected before at the same place with the same text: its raw line is kept.
        return {r.location for r in batch.rejects} - {loc for loc, in new_locations}

    def _write_drift(self, cursor: Any, batch: Batch) -> None:
        """The schema-drift events seen while reading the batch."""
        execute_values(
            cursor,
            "INSERT INTO drift_events (source, run_id, location, kind, field, observed, "
            "confidence, mapped, detail) VALUES %s",
            [(self.source, self.run_id, e.location, e.kind, e.field, e.observed,
              round(e.confidence, 3), e.mapped, e.detail[:2000]) for e in batch.drift],
        )

    def _render_quotes(self, session: Session, batch: Batch) -> PreparedQuotes:
        """Resolve the batch's coins, check them and render its quotes as COPY data (a flagged
        quote's flags in its own cells), with their keys and the batch's flag writes."""
        # Only the coins the run has not resolved yet: resolve_assets skips the others anyway,
        # and the next batches of an append hold the same 1,000 coins again.
        known = self.asset_cache
        hints = {q.source_asset_id: IdentityHint(q.source_asset_id, q.symbol, q.name)
                 for q in batch.quotes if q.source_asset_id not in known}
        for block in batch.quote_blocks:
            if block.source_asset_id not in known and block.source_asset_id not in hints:
                hints[block.source_asset_id] = IdentityHint(block.source_asset_id, block.symbol,
                                                            block.name)
        assets = resolve_assets(session, self.source, list(hints.values()), self.aliases, known)
        quality = batch_flags(session.connection().connection.cursor(), self.source, batch,
                              assets, self.thresholds, self.stamp_micros)
        set_ids = self._flag_set_ids(session, quality)
        jump_set = set_ids.get(quality.set_key(KIND_BITS[JUMP]), 0)
        parts = []
        for index, block in enumerate(batch.quote_blocks):
            text = (block_copy_text(block, *block_cells(quality, index, jump_set))
                    if index in quality.jumps else block_copy_text(block))
            parts.append(text.replace(ASSET_SLOT, str(assets[block.source_asset_id])))
        for index, q in enumerate(batch.quotes):
            stored = quality.quotes.get(index)
            parts.append(quote_line(
                assets[q.source_asset_id], self.source, self.run_id, q,
                None if stored is None else (set_ids[quality.set_key(stored[0])], *stored[1:])))
        spans: dict[int, tuple[str, str]] = {}

        def cover(asset_id: int, first: str, last: str) -> None:
            span = spans.get(asset_id)
            if span is not None:
                first, last = min(span[0], first), max(span[1], last)
            spans[asset_id] = (first, last)

        for block in batch.quote_blocks:
            if block.stamps:
                cover(assets[block.source_asset_id], min(block.stamps), max(block.stamps))
        for q in batch.quotes:
            stamp = q.observed_at.isoformat()
            cover(assets[q.source_asset_id], stamp, stamp)
        return PreparedQuotes("".join(parts).encode(), spans,
                              outlier_assets=quality.outlier_assets,
                              writes=flag_writes(quality, set_ids),
                              probe=quality.may_meet_stored(spans))

    def _flag_set_ids(self, session: Session, quality: BatchQuality) -> dict[SetKey, int]:
        """The ids of the flag sets the batch needs; new ones committed on their own (a set
        is valid whether or not the batch commits, and never holds a lock a batch waits on)."""
        missing = quality.set_keys() - self.flag_sets.keys()
        if missing:
            bind = session.get_bind()
            engine = bind.engine if isinstance(bind, Connection) else bind
            with engine.begin() as conn:
                cursor = conn.connection.cursor()
                for bits, fetched_at in sorted(missing, key=lambda key: key[0]):
                    self.flag_sets[(bits, fetched_at)] = new_flag_set(
                        cursor, self.source, self.run_id, bits, fetched_at, self.thresholds).id
        return self.flag_sets


# Whether a stored quote of this source falls in one of the batch's per-asset time spans: one
# index range probe per asset on the quotes' primary key. No: the batch cannot collide
# (batches in flight beside it are proved disjoint by shared.ingest.pipeline), so COPY goes
# straight.
_KEYS_IN_SPANS = """
SELECT EXISTS (
    SELECT 1 FROM unnest(%(ids)s::bigint[], %(first)s::timestamptz[], %(last)s::timestamptz[])
        AS span(asset_id, first_at, last_at)
    WHERE EXISTS (SELECT 1 FROM quotes q WHERE q.asset_id = span.asset_id
                  AND q.source = %(source)s AND q.observed_at BETWEEN span.first_at
                  AND span.last_at))
"""


def _may_hold_keys(cursor: Any, source: str, prepared: PreparedQuotes) -> bool:
    """Whether some of the batch's quote keys may be stored already (then stage them).

    Only the assets whose span reaches back to their newest stored quote are probed
    (PreparedQuotes.probe, from the quality step's read of the published quotes); a batch
    with none (a first load, an append) needs no query.
    """
    ids = list(prepared.spans) if prepared.probe is None else prepared.probe
    if not ids:
        return False
    cursor.execute(_KEYS_IN_SPANS, {
        "ids": array_text(ids), "source": source,
        "first": array_text(prepared.spans[i][0] for i in ids),
        "last": array_text(prepared.spans[i][1] for i in ids),
    })
    return bool(cursor.fetchone()[0])


# What a batch writes after its turn, in one statement (one round trip): the newest quotes of
# the assets it inserted quotes for, published into current_quotes (shared.ingest.publish: in the
# batch's own transaction, so nothing committed stays unpublished; each asset's quote looked up
# at the end of its span in the batch), the run's counters, and
# the checkpoint's compare-and-set, which must move exactly one row: it moves only from the
# value this run started from (or is created if there was none), else another execution
# committed first. A data-modifying CTE runs whether or not the main query reads it, and sees
# the batch's quotes (earlier statements of the transaction).
_END_BATCH = """
WITH published AS ({publish}), counted AS ({count}), flagged AS ({flagged}), moved AS ({move})
SELECT count(*) FROM moved
"""
# The quotes the batch wrote with each flag set (the status page's count of flagged quotes).
_FLAG_SET_COUNTS = (
    "UPDATE flag_sets s SET quotes = s.quotes + c.n "
    "FROM unnest(%(set_ids)s::bigint[], %(set_counts)s::bigint[]) AS c(id, n) WHERE s.id = c.id"
)
_CHECKPOINT_CREATE = (
    "INSERT INTO checkpoints (source, key, value, run_id, updated_at) "
    "VALUES (%(source)s, %(key)s, %(value)s, %(run)s, now()) "
    "ON CONFLICT (source, key) DO NOTHING RETURNING 1"
)
_CHECKPOINT_MOVE = (
    "UPDATE checkpoints SET value = %(value)s, run_id = %(run)s, updated_at = now() "
    "WHERE source = %(source)s AND key = %(key)s AND value = %(previous)s RETURNING 1"
)
_END_BATCH_CREATE = _END_BATCH.format(publish=PUBLISH_BATCH_SQL, count=BATCH_PROGRESS_SQL,
                                      flagged=_FLAG_SET_COUNTS, move=_CHECKPOINT_CREATE)
_END_BATCH_MOVE = _END_BATCH.format(publish=PUBLISH_BATCH_SQL, count=BATCH_PROGRESS_SQL,
                                    flagged=_FLAG_SET_COUNTS, move=_CHECKPOINT_MOVE)


def array_text(values: Iterable[object]) -> str:
    """A PostgreSQL array literal ('{1,2}') of numbers or ISO times, bound as one text value.

    A Python list becomes ARRAY[...] with one constant per item, which PostgreSQL parses and
    the planner estimates item by item: for a batch's 1,000 assets that cost more than the
    query's own execution. The caller's SQL casts the text (::bigint[], ::timestamptz[]).
    """
    return "{" + ",".join(map(str, values)) + "}"


def _end_batch(
    cursor: Any, source: str, run_id: int, batch: Batch, previous: dict[str, Any] | None,
    prepared: PreparedQuotes | None, result: BatchResult,
) -> None:
    """Publish, add the counters and move the checkpoint (raises CheckpointMoved)."""
    # A batch that inserted nothing publishes nothing: every quote it met is stored and was
    # published by the batch that stored it.
    assets = sorted(prepared.asset_ids) if result.inserted and prepared is not None else []
    writes = prepared.writes if prepared is not None else None
    if not isinstance(writes, FlagWrites) or not assets:
        writes = FlagWrites()
    newest = [prepared.spans[asset_id][1] for asset_id in assets] if prepared else []
    cursor.execute(_END_BATCH_CREATE if previous is None else _END_BATCH_MOVE, {
        "run": run_id, "assets": array_text(assets), "newest_at": array_text(newest),
        "source": source, "key": batch.checkpoint_key,
        "value": Json(batch.checkpoint), "previous": Json(previous),
        "set_ids": list(writes.set_counts), "set_counts": list(writes.set_counts.values()),
        **writes.published, **{name: getattr(result, name) for name in RUN_LOAD_COUNTERS},
    })
    moved, = cursor.fetchone()
    if moved != 1:
        raise CheckpointMoved(
            f"checkpoint {source}/{batch.checkpoint_key} moved under run {run_id}")


def load_checkpoints(session: Session, source: str) -> dict[str, dict[str, Any]]:
    """All committed checkpoints of a source, key -> value."""
    rows = session.execute(
        text("SELECT key, value FROM checkpoints WHERE source = :s"), {"s": source}
    )
    return {key: value for key, value in rows}
