"""GET /raw: a source's raw records, and the lines of line sources cut out of their blocks."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.orm import Session

from shared.config import SOURCES
from shared.errors import NotFound
from shared.models import LINE_SOURCES, RAW_LINE_ID_BITS, RawLineBlock, RawRecord
from shared.queries.paging import (
    BIGINT_MAX,
    InvalidCursor,
    Page,
    cursor_int,
    decode_cursor,
    fetch_page,
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


@dataclass(frozen=True)
class RawLine:
    """One raw line of a line source, cut out of its raw_line_blocks row."""

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
    if source in LINE_SOURCES:
        return _raw_line_page(session, source, run_id, offset, limit, after)
    conditions: list[ColumnElement[bool]] = [RawRecord.source == source]
    if run_id is not None:
        conditions.append(RawRecord.run_id == run_id)
    base = select(RawRecord).where(*conditions)
    query = base if after is None else base.where(RawRecord.id < after)
    query = query.order_by(RawRecord.id.desc())
    return fetch_page(session, query, base, offset=offset, limit=limit,
                      cursor_of=lambda row: {"t": "raw", "src": source, "id": row.id})


def _raw_line_page(
    session: Session, source: str, run_id: int | None, offset: int, limit: int,
    after: int | None,
) -> Page:
    """Newest lines first: find the blocks the page needs by their sizes, then cut them."""
    conditions: list[ColumnElement[bool]] = [RawLineBlock.source == source]
    if run_id is not None:
        conditions.append(RawLineBlock.run_id == run_id)
    sizes = session.execute(
        select(RawLineBlock.id, func.cardinality(RawLineBlock.line_numbers))
        .where(*conditions).order_by(RawLineBlock.id.desc())
    ).all()
    after_block, after_index = (
        (after >> RAW_LINE_ID_BITS, after & ((1 << RAW_LINE_ID_BITS) - 1))
        if after is not None else (None, None))
    needed, skip = limit + 1, offset
    spans: list[tuple[int, int, int]] = []  # (block id, highest index, lowest index)
    for block_id, size in sizes:
        if needed <= 0:
            break
        top = size - 1
        if after_block is not None and after_index is not None:
            if block_id > after_block:
                continue
            if block_id == after_block:
                top = min(top, after_index - 1)
        if skip > top:
            skip -= top + 1
            continue
        top -= skip
        skip = 0
        take = min(needed, top + 1)
        spans.append((block_id, top, top - take + 1))
        needed -= take
    lines: list[RawLine] = []
    for block_id, top, bottom in spans:
        # By id alone: the key is (id, fetched_at) since the table is partitioned (0018).
        block = session.scalars(select(RawLineBlock).where(RawLineBlock.id == block_id)).first()
        if block is not None:
            lines.extend(_cut_lines(block, range(top, bottom - 1, -1)))
    rows, next_cursor = trim_page(lines, limit,
                                  lambda line: {"t": "raw", "src": source, "id": line.id})
    return Page(rows=rows, total=sum(size for _, size in sizes), next_cursor=next_cursor)


def _cut_lines(block: RawLineBlock, indexes: Sequence[int]) -> list[RawLine]:
    texts = block.payload.split("\n")
    hashes = bytes(block.line_hashes)
    return [RawLine(
        id=(block.id << RAW_LINE_ID_BITS) + i, source=block.source,
        source_key=f"{block.file_key}:{block.line_numbers[i]}", payload=texts[i],
        content_hash=hashes[i * 32:(i + 1) * 32], run_id=block.run_id,
        fetched_at=block.fetched_at,
    ) for i in indexes]


def get_raw_record(session: Session, source: str, record_id: int) -> RawRecord | RawLine:
    """One raw record of `source`; NotFound when the source or the record is unknown."""
    _known_source(source)
    record: RawRecord | RawLine | None = None
    if record_id > BIGINT_MAX:
        pass
    elif source in LINE_SOURCES:
        block_id, index = record_id >> RAW_LINE_ID_BITS, record_id & ((1 << RAW_LINE_ID_BITS) - 1)
        # Cut in SQL: a block holds up to CSV_BATCH_ROWS lines (MBs of text and hashes), and
        # only one line of it travels to us.
        row = session.execute(_ONE_LINE, {"block": block_id, "i": index, "source": source}
                              ).one_or_none()
        if row is not None:
            record = RawLine(
                id=record_id, source=source, source_key=f"{row.file_key}:{row.line_number}",
                payload=row.payload, content_hash=bytes(row.content_hash), run_id=row.run_id,
                fetched_at=row.fetched_at)
    else:
        found = session.get(RawRecord, record_id)
        record = found if found is not None and found.source == source else None
    if record is None:
        raise NotFound(f"raw record {record_id} of {source} not found")
    return record
