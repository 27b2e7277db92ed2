"""GET /raw: a source's raw records, cut out of their blocks (CSV lines, API items)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.orm import Session

from shared.config import SOURCES
from shared.batch.item_texts import stored_texts
from shared.errors import NotFound
from shared.models import LINE_SOURCES, RAW_LINE_ID_BITS, RawItemBlock, RawLineBlock
from shared.storage import counters
from shared.queries.paging import (
    BIGINT_MAX,
    InvalidCursor,
    Page,
    cursor_int,
    decode_cursor,
    trim_page,
)

# Line `:i` (0-based) of one raw_line_blocks row, if the block is `:source`'s and holds it.
_ONE_LINE = text("""
SELECT split_part(payload, E'\\n', :i + 1) AS payload, line_numbers[:i + 1] AS line_number,
       substring(line_hashes FROM :i * 32 + 1 FOR 32) AS content_hash, file_key, run_id,
       fetched_at
FROM raw_line_blocks
WHERE id = :block AND source = :source AND :i < cardinality(line_numbers)
""")


# Item `:i` (0-based) of one raw_item_blocks row, if the block is `:source`'s and holds it.
_ONE_ITEM = text("""
SELECT payload, source_keys[:i + 1] AS source_key,
       substring(item_hashes FROM :i * 32 + 1 FOR 32) AS content_hash, run_id, fetched_at
FROM raw_item_blocks
WHERE id = :block AND source = :source AND :i < items
""")
_INDEX_MASK = (1 << RAW_LINE_ID_BITS) - 1


@dataclass(frozen=True)
class RawLine:
    """One raw record (a CSV line or an API item), cut out of its block."""

    id: int
    source: str
    source_key: str
    payload: str
    content_hash: bytes
    run_id: int | None
    fetched_at: datetime


def _known_source(source: str) -> str:
    if source not in SOURCES:
        raise NotFound(f"source {source[:100]!r} not found; known sources: {', '.join(SOURCES)}")
    return source


def list_raw_records(
    session: Session,
    source: str,
    *,
    run_id: int | None = None,
    offset: int = 0,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """One page of a source's raw records, newest first; NotFound for an unknown source."""
    _known_source(source)
    after: int | None = None
    if cursor is not None:
        payload = decode_cursor(cursor, "raw")
        if payload.get("src") != source:
            raise InvalidCursor("cursor was issued for another source")
        after = cursor_int(payload, "id")
        offset = 0
    lines = source in LINE_SOURCES
    model: Any = RawLineBlock if lines else RawItemBlock
    size = func.cardinality(RawLineBlock.line_numbers) if lines else RawItemBlock.items
    conditions: list[ColumnElement[bool]] = [model.source == source]
    if run_id is not None:
        conditions.append(model.run_id == run_id)
    if run_id is None:
        # The writers' exact count (shared.storage.counters), not a sum over every block.
        total = int(counters.totals(session).get("raw", {}).get(source, 0))
    else:
        total = session.execute(select(func.coalesce(func.sum(size), 0)).where(*conditions)
                                ).scalar_one()
    after_block, after_index = (
        (after >> RAW_LINE_ID_BITS, after & _INDEX_MASK) if after is not None else (None, None))
    if after_block is not None:
        conditions.append(model.id <= after_block)
    # Every block holds at least one record: the page needs at most this many blocks.
    sizes = session.execute(select(model.id, size).where(*conditions)
                            .order_by(model.id.desc()).limit(offset + limit + 2)).all()
    needed, skip = limit + 1, offset
    spans: list[tuple[int, int, int]] = []  # (block id, highest index, lowest index)
    for block_id, block_size in sizes:
        if needed <= 0:
            break
        top = block_size - 1
        if block_id == after_block and after_index is not None:
            top = min(top, after_index - 1)
        if skip > top:
            skip -= top + 1
            continue
        top -= skip
        skip = 0
        take = min(needed, top + 1)
        spans.append((block_id, top, top - take + 1))
        needed -= take
    records: list[RawLine] = []
    key_frames: dict[int, bytes] = {}  # the pages of a list mostly share one
    for block_id, top, bottom in spans:
        # By id alone: the key is (id, fetched_at) since the tables are partitioned.
        block = session.scalars(select(model).where(model.id == block_id)).first()
        if block is not None:
            records.extend(_cut(session, block, range(top, bottom - 1, -1), key_frames))
    rows, next_cursor = trim_page(records, limit,
                                  lambda record: {"t": "raw", "src": source, "id": record.id})
    return Page(rows=rows, total=int(total), next_cursor=next_cursor)


def _cut(session: Session, block: RawLineBlock | RawItemBlock, indexes: Sequence[int],
         key_frames: dict[int, bytes]) -> list[RawLine]:
    """The records at `indexes` of a block, as RawLine (`key_frames`: read so far, by id)."""
    if isinstance(block, RawItemBlock):
        payloads = stored_texts(session, bytes(block.payload), block.source, block.fetched_at,
                                key_frames)
        hashes = bytes(block.item_hashes)
        keys = [block.source_keys[i] for i in indexes]
    else:
        payloads, hashes = block.payload.split("\n"), bytes(block.line_hashes)
        keys = [f"{block.file_key}:{block.line_numbers[i]}" for i in indexes]
    return [RawLine(
        id=(block.id << RAW_LINE_ID_BITS) + i, source=block.source, source_key=key,
        payload=payloads[i], content_hash=hashes[i * 32:(i + 1) * 32], run_id=block.run_id,
        fetched_at=block.fetched_at,
    ) for i, key in zip(indexes, keys)]


def get_raw_record(session: Session, source: str, record_id: int) -> RawLine:
    """One raw record of `source`; NotFound when the source or the record is unknown."""
    _known_source(source)
    record: RawLine | None = None
    if record_id <= BIGINT_MAX:
        block_id, index = record_id >> RAW_LINE_ID_BITS, record_id & _INDEX_MASK
        # A line is cut in SQL (a block holds up to CSV_BATCH_ROWS lines, MBs of text and
        # hashes); an item's page travels compressed (a few tens of KB, with its key frame's
        # if it names one) and is cut here.
        lines = source in LINE_SOURCES
        found = session.execute(_ONE_LINE if lines else _ONE_ITEM,
                                {"block": block_id, "i": index, "source": source}
                                ).one_or_none()
        if found is not None:
            record = RawLine(
                id=record_id, source=source,
                source_key=(f"{found.file_key}:{found.line_number}" if lines
                            else found.source_key),
                payload=(found.payload if lines
                         else stored_texts(session, bytes(found.payload), source,
                                           found.fetched_at)[index]),
                content_hash=bytes(found.content_hash), run_id=found.run_id,
                fetched_at=found.fetched_at)
    if record is None:
        raise NotFound(f"raw record {record_id} of {source} not found")
    return record
