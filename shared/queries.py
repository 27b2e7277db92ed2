"""Read queries behind the API (kept here so the CLI and tests can call them too)."""
from __future__ import annotations

import base64
import binascii
import json
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Hashable, Protocol, Sequence

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    Text,
    and_,
    func,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from shared.config import SOURCES
from shared.errors import NotFound
from shared.models import (
    Asset,
    AssetSourceId,
    CurrentQuote,
    Quote,
    LINE_SOURCES,
    RAW_LINE_ID_BITS,
    RawLineBlock,
    RawRecord,
    Run,
)
from shared.paging import DecimalKeyError, decimal_key, parse_decimal_key

BIGINT_MAX = 2**63 - 1
# Room for a text sort key at its column's length (300 characters, each up to 6 bytes of JSON).
CURSOR_MAX_LENGTH = 3072

# Sort fields of GET /data; every one is backed by a column of current_quotes.
DATA_SORT_FIELDS: tuple[str, ...] = (
    "asset_id", "symbol", "name", "source", "price_usd", "market_cap_usd", "volume_24h_usd",
    "rank", "observed_at",
)
_DATA_SORT_COLUMNS: dict[str, InstrumentedAttribute[Any]] = {
    name: getattr(CurrentQuote, name) for name in DATA_SORT_FIELDS
}
_NULLABLE_SORT_FIELDS = frozenset({"price_usd", "market_cap_usd", "volume_24h_usd", "rank"})
_DECIMAL_SORT_FIELDS = frozenset({"price_usd", "market_cap_usd", "volume_24h_usd"})
_INT_SORT_FIELDS = frozenset({"asset_id", "rank"})


class InvalidCursor(ValueError):
    """A paging cursor that we did not issue, or that belongs to another query."""

    field = "cursor"


@dataclass(frozen=True)
class Page:
    """One page of rows, the total matching the filters, and the cursor of the next page."""

    rows: Sequence[Any]
    total: int
    next_cursor: str | None


@dataclass(frozen=True)
class DataFilters:
    """Filters of the current-records listing (all optional, combined with AND)."""

    source: str | None = None
    symbols: tuple[str, ...] = ()
    assets: tuple[str, ...] = ()
    q: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class Consensus:
    """Cross-source agreement on an asset's price."""

    price_usd: Decimal | None
    min_price_usd: Decimal | None
    max_price_usd: Decimal | None
    spread: float | None
    disagree: bool
    threshold: float
    sources: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AssetDetail:
    """An asset, its ids at each source, its current quote per source and the consensus."""

    asset: Asset
    source_ids: Sequence[AssetSourceId]
    quotes: Sequence[CurrentQuote]
    consensus: Consensus


# --- cursors -------------------------------------------------------------------------------

def encode_cursor(payload: dict[str, Any]) -> str:
    """An opaque cursor: base64url (unpadded) of compact JSON."""
    # Text keys as UTF-8, not \uXXXX escapes: a 300-character name stays within the length.
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True,
                     ensure_ascii=False).encode("utf-8")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(token: str, kind: str) -> dict[str, Any]:
    """The payload of a cursor issued by `encode_cursor` for a query of `kind`."""
    if not token or len(token) > CURSOR_MAX_LENGTH:
        raise InvalidCursor("cursor is empty or too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("cursor is not one this API issued") from exc
    if not isinstance(payload, dict) or payload.get("t") != kind:
        raise InvalidCursor("cursor is not one this API issued for this listing")
    return payload


def _cursor_int(payload: dict[str, Any], key: str) -> int:
    value = payload.get(key)
    if type(value) is not int or not 0 <= value <= BIGINT_MAX:
        raise InvalidCursor(f"cursor field {key!r} is not a valid id")
    return value


def _cursor_str(payload: dict[str, Any], key: str, max_length: int = 300) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or len(value) > max_length or "\x00" in value:
        raise InvalidCursor(f"cursor field {key!r} is not a valid string")
    return value


def _cursor_datetime(payload: dict[str, Any], key: str) -> datetime:
    value = _cursor_str(payload, key, 64)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidCursor(f"cursor field {key!r} is not a timestamp") from exc
    if parsed.tzinfo is None:
        raise InvalidCursor(f"cursor field {key!r} has no time zone")
    return parsed


def _sort_key_to_json(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _DECIMAL_SORT_FIELDS:
        return format(Decimal(value), "f")
    if name == "observed_at":
        return value.isoformat()
    return value


def _sort_key_from_json(name: str, value: Any) -> Any:
    if value is None:
        if name not in _NULLABLE_SORT_FIELDS:
            raise InvalidCursor(f"cursor has no value for sort field {name!r}")
        return None
    if name in _DECIMAL_SORT_FIELDS:
        try:
            return parse_decimal_key(value)
        except DecimalKeyError as exc:
            raise InvalidCursor(f"cursor value for {name!r} is {exc}") from None
    if name in _INT_SORT_FIELDS:
        return _cursor_int({"v": value}, "v")
    if name == "observed_at":
        return _cursor_datetime({"v": value}, "v")
    return _cursor_str({"v": value}, "v")


def _keyset_after(
    column: Any, value: Any, descending: bool, nullable: bool,
    tiebreak: Sequence[Any], tiebreak_values: Sequence[Any],
) -> ColumnElement[bool]:
    """Rows after (value, tiebreak...) in `column dir NULLS LAST, tiebreak ASC` order."""
    after_tie = tuple_(*tiebreak) > tuple_(*tiebreak_values)
    if column is tiebreak[0] and value == tiebreak_values[0] and not descending:
        # Sorting by the key's own first column (GET /data's default): one row comparison is
        # an index range the planner estimates right. The general form below makes it guess
        # ~10% of the real row count and sort every remaining row (bench case 4, deep page).
        return after_tie
    if value is None:
        return and_(column.is_(None), after_tie)
    beyond = column < value if descending else column > value
    # The redundant bound (<= / >=) gives the planner an index range to start from; the OR
    # alone makes it scan from the first row and filter, so deep pages would cost more.
    bound = column <= value if descending else column >= value
    condition = and_(bound, or_(beyond, and_(column == value, after_tie)))
    return or_(condition, column.is_(None)) if nullable else condition


def time_bounds(
    column: Any, since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    """`since <= column <= until`, each bound only when given."""
    bounds: list[ColumnElement[bool]] = []
    if since:
        bounds.append(column >= since)
    if until:
        bounds.append(column <= until)
    return bounds


def _count(session: Session, query: Select[Any]) -> int:
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    return int(total or 0)


def _page(
    session: Session, query: Select[Any], counted: Select[Any], *, offset: int, limit: int,
    cursor_of: Callable[[Any], dict[str, Any]],
) -> Page:
    """Fetch one row more than asked to learn whether a next page exists."""
    rows, next_cursor = _trim(list(session.scalars(query.offset(offset).limit(limit + 1))),
                              limit, cursor_of)
    return Page(rows=rows, total=_count(session, counted), next_cursor=next_cursor)


def _trim(rows: list[Any], limit: int, cursor_of: Callable[[Any], dict[str, Any]]
          ) -> tuple[list[Any], str | None]:
    """Rows fetched with one extra: the page, and the cursor of its last row if more exist."""
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(cursor_of(rows[-1])) if more and rows else None)


# --- GET /data -----------------------------------------------------------------------------

def escape_like(value: str) -> str:
    """`value` with LIKE wildcards and the escape character escaped (escape char: backslash)."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _split_asset_refs(refs: Sequence[str]) -> tuple[list[int], list[str]]:
    ids: list[int] = []
    slugs: list[str] = []
    for ref in refs:
        ref = ref.strip()
        if ref.isdigit() and ref.isascii():
            number = int(ref)
            if number <= BIGINT_MAX:
                ids.append(number)
        elif ref and "\x00" not in ref:
            slugs.append(ref.lower())
    return ids, slugs


def _data_conditions(filters: DataFilters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.source:
        conditions.append(CurrentQuote.source == filters.source)
    symbols = sorted({s.strip().upper() for s in filters.symbols if s.strip()})
    if len(symbols) == 1:
        conditions.append(CurrentQuote.symbol == symbols[0])
    elif symbols:
        conditions.append(CurrentQuote.symbol.in_(symbols))
    elif filters.symbols:  # only blank symbols: nothing can match
        conditions.append(CurrentQuote.symbol.is_(None))
    if filters.assets:
        ids, slugs = _split_asset_refs(filters.assets)
        matches: list[ColumnElement[bool]] = []
        if ids:
            matches.append(CurrentQuote.asset_id.in_(ids))
        if slugs:
            matches.append(CurrentQuote.asset_id.in_(
                select(Asset.id).where(func.lower(Asset.slug).in_(slugs))))
        # Only unusable references: nothing can match.
        conditions.append(or_(*matches) if matches else CurrentQuote.asset_id.is_(None))
    if filters.q:
        pattern = f"%{escape_like(filters.q.strip())}%"
        conditions.append(or_(CurrentQuote.name.ilike(pattern, escape="\\"),
                              CurrentQuote.symbol.ilike(pattern, escape="\\")))
    return conditions + time_bounds(CurrentQuote.observed_at, filters.since, filters.until)


def parse_sort(sort: str, allowed: Sequence[str]) -> tuple[str, bool]:
    """('-price_usd', allowed) -> ('price_usd', True); ValueError for a field not allowed."""
    name, descending = (sort[1:], True) if sort.startswith("-") else (sort, False)
    if name not in allowed:
        raise ValueError(f"cannot sort by {name!r}")
    return name, descending


# The record of GET /data, in the order of the select below. Money is cast to text in SQL:
# PostgreSQL prints numeric in plain notation with its stored scale, exactly the string
# format(Decimal(value), "f") gave, without building a Decimal per value.
DATA_RECORD_FIELDS: tuple[str, ...] = (
    "asset_id", "symbol", "name", "source", "source_asset_id", "price_usd", "market_cap_usd",
    "volume_24h_usd", "rank", "observed_at",
)
_DATA_RECORD_COLUMNS: tuple[Any, ...] = tuple(
    getattr(CurrentQuote, name).cast(Text).label(name) if name in _DECIMAL_SORT_FIELDS
    else getattr(CurrentQuote, name)
    for name in DATA_RECORD_FIELDS
)
_DATA_SORT_POSITION = {name: DATA_RECORD_FIELDS.index(name) for name in DATA_SORT_FIELDS}


DATA_VERSION_SQL = "SELECT version FROM data_version WHERE id = 1"


def read_data_version(conn: Connection) -> int | None:
    """The version of current_quotes (migration 0004); None if its row is missing."""
    version = conn.exec_driver_sql(DATA_VERSION_SQL).scalar()
    return None if version is None else int(version)


def count_current_quotes(conn: Connection | Session, filters: DataFilters | None = None) -> int:
    """How many current records match `filters` (an exact count)."""
    query = select(func.count()).select_from(CurrentQuote).where(
        *_data_conditions(filters or DataFilters()))
    return int(conn.execute(query).scalar_one())


def list_current_quotes(
    conn: Connection | Session,
    filters: DataFilters | None = None,
    *,
    sort: str = "asset_id",
    offset: int = 0,
    limit: int = 50,
    cursor: str | None = None,
    total: int | None = None,
) -> Page:
    """One page of current records in `sort` order (ties by asset_id, source), keyset or offset.

    Rows are tuples in DATA_RECORD_FIELDS order (money as exact decimal strings). With
    `cursor` the page starts right after the row the cursor was issued for, so rows written
    between two calls neither repeat nor shift the pages (offset is then ignored). `total`,
    when the caller already knows it for these filters, saves the count.
    """
    filters = filters or DataFilters()
    name, descending = parse_sort(sort, DATA_SORT_FIELDS)
    column = _DATA_SORT_COLUMNS[name]
    nullable = name in _NULLABLE_SORT_FIELDS
    query = select(*_DATA_RECORD_COLUMNS).where(*_data_conditions(filters))
    if cursor is not None:
        payload = decode_cursor(cursor, "data")
        if payload.get("s") != sort:
            raise InvalidCursor(f"cursor was issued for sort={payload.get('s')!r}, not {sort!r}")
        if "k" not in payload:
            raise InvalidCursor("cursor has no sort key")
        key = _sort_key_from_json(name, payload["k"])
        asset_id, source = _cursor_int(payload, "a"), _cursor_str(payload, "r", 32)
        query = query.where(_keyset_after(
            column, key, descending, nullable,
            (CurrentQuote.asset_id, CurrentQuote.source), (asset_id, source)))
        offset = 0
    ordered = column.desc() if descending else column.asc()
    query = query.order_by(ordered.nulls_last(), CurrentQuote.asset_id, CurrentQuote.source)
    position = _DATA_SORT_POSITION[name]

    def cursor_of(row: tuple[Any, ...]) -> dict[str, Any]:
        # Decimal keys are already plain-notation strings (see _DATA_RECORD_COLUMNS).
        key_json = (decimal_key(row[position], descending) if name in _DECIMAL_SORT_FIELDS
                    and row[position] is not None
                    else _sort_key_to_json(name, row[position]))
        return {"t": "data", "s": sort, "k": key_json, "a": row[0], "r": row[3]}

    rows, next_cursor = _trim(
        [tuple(row) for row in conn.execute(query.offset(offset).limit(limit + 1))],
        limit, cursor_of)
    if total is None:
        total = count_current_quotes(conn, filters)
    return Page(rows=rows, total=total, next_cursor=next_cursor)


class TotalsCache(Protocol):
    """Where totals are kept per data version (the API's api.answer_cache.VersionedCache)."""

    def get(self, version: int | None, key: Hashable) -> Any:
        """The value stored for `key` at exactly this version, or None."""

    def put(self, version: int, key: Hashable, value: Any, size: int) -> None:
        """Keep `value` (about `size` bytes) for `key` at `version`."""


@dataclass(frozen=True)
class DataSnapshot:
    """A /data page read in one snapshot, with the data version that snapshot holds."""

    version: int | None
    page: Page


def read_current_quotes(
    engine: Engine,
    filters: DataFilters,
    totals: TotalsCache | None = None,
    **window: Any,
) -> DataSnapshot:
    """The data version, one page and its total, all from one REPEATABLE READ snapshot.

    The total of each filter set is kept in `totals` per data version, so an exact count runs
    once per (filters, version) and process instead of on every request.
    """
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        with conn.begin():
            version = read_data_version(conn)
            total = None
            if totals is not None and version is not None:
                total = totals.get(version, ("total", filters))
            page = list_current_quotes(conn, filters, total=total, **window)
            if totals is not None and version is not None and total is None:
                totals.put(version, ("total", filters), page.total, 200)
    return DataSnapshot(version, page)


# --- GET /data/<asset> and /data/<asset>/history ---------------------------------------------

def resolve_asset(session: Session, ref: str) -> Asset:
    """The asset named by its id or its slug; NotFound otherwise."""
    ids, slugs = _split_asset_refs([ref])
    asset: Asset | None = None
    if ids:
        asset = session.get(Asset, ids[0])
    elif slugs and len(slugs[0]) <= 200:
        asset = session.scalar(select(Asset).where(Asset.slug == ref.strip()))
        if asset is None:
            asset = session.scalar(
                select(Asset).where(func.lower(Asset.slug) == slugs[0]).order_by(Asset.id)
                .limit(1))
    if asset is None:
        raise NotFound(f"asset {ref[:100]!r} not found")
    return asset


def price_consensus(quotes: Sequence[CurrentQuote], threshold: float) -> Consensus:
    """Median price across sources and the relative spread (max - min) / median."""
    priced = [(q.source, Decimal(q.price_usd)) for q in quotes if q.price_usd is not None]
    if not priced:
        return Consensus(None, None, None, None, False, threshold, [])
    prices = [p for _, p in priced]
    median = statistics.median(prices)
    low, high = min(prices), max(prices)
    spread = float((high - low) / median) if median > 0 else None
    disagree = spread is not None and spread > threshold
    return Consensus(median, low, high, spread, disagree, threshold,
                     sorted({s for s, _ in priced}))


def asset_detail(session: Session, ref: str, disagreement_share: float) -> AssetDetail:
    """Everything known now about one asset, across sources."""
    asset = resolve_asset(session, ref)
    source_ids = session.scalars(
        select(AssetSourceId).where(AssetSourceId.asset_id == asset.id)
        .order_by(AssetSourceId.source, AssetSourceId.source_asset_id)
    ).all()
    quotes = session.scalars(
        select(CurrentQuote).where(CurrentQuote.asset_id == asset.id)
        .order_by(CurrentQuote.source)
    ).all()
    return AssetDetail(asset, source_ids, quotes, price_consensus(quotes, disagreement_share))


def asset_history(
    session: Session,
    ref: str,
    *,
    source: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    offset: int = 0,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """One page of an asset's quotes, newest first (ties by source, descending)."""
    asset = resolve_asset(session, ref)
    conditions: list[ColumnElement[bool]] = [Quote.asset_id == asset.id]
    if source:
        conditions.append(Quote.source == source)
    conditions += time_bounds(Quote.observed_at, since, until)
    base = select(Quote).where(*conditions)
    query = base
    if cursor is not None:
        payload = decode_cursor(cursor, "history")
        if _cursor_int(payload, "a") != asset.id:
            raise InvalidCursor("cursor was issued for another asset")
        observed, last_source = _cursor_datetime(payload, "o"), _cursor_str(payload, "r", 32)
        query = query.where(tuple_(Quote.observed_at, Quote.source) < tuple_(observed, last_source))
        offset = 0
    query = query.order_by(Quote.observed_at.desc(), Quote.source.desc())

    def cursor_of(row: Quote) -> dict[str, Any]:
        return {"t": "history", "a": asset.id, "o": row.observed_at.isoformat(), "r": row.source}

    return _page(session, query, base, offset=offset, limit=limit, cursor_of=cursor_of)


# --- GET /raw ----------------------------------------------------------------------------------

def _known_source(source: str) -> str:
    if source not in SOURCES:
        raise NotFound(f"source {source[:100]!r} not found; known sources: {', '.join(SOURCES)}")
    return source


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
        after = _cursor_int(payload, "id")
        offset = 0
    if source in LINE_SOURCES:
        return _raw_line_page(session, source, run_id, offset, limit, after)
    conditions: list[ColumnElement[bool]] = [RawRecord.source == source]
    if run_id is not None:
        conditions.append(RawRecord.run_id == run_id)
    base = select(RawRecord).where(*conditions)
    query = base if after is None else base.where(RawRecord.id < after)
    query = query.order_by(RawRecord.id.desc())
    return _page(session, query, base, offset=offset, limit=limit,
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
        block = session.get(RawLineBlock, block_id)
        if block is not None:
            lines.extend(_cut_lines(block, range(top, bottom - 1, -1)))
    rows, next_cursor = _trim(lines, limit,
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


# Line `:i` (0-based) of one raw_line_blocks row, if the block is `:source`'s and holds it.
_ONE_LINE = text("""
SELECT split_part(payload, E'\\n', :i + 1) AS payload, line_numbers[:i + 1] AS line_number,
       substring(line_hashes FROM :i * 32 + 1 FOR 32) AS content_hash, file_key, run_id,
       fetched_at
FROM raw_line_blocks
WHERE id = :block AND source = :source AND :i < cardinality(line_numbers)
""")


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


# --- GET /runs ----------------------------------------------------------------------------------

def list_runs(
    session: Session,
    *,
    source: str | None = None,
    status: str | None = None,
    job_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    offset: int = 0,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """One page of runs, newest first, filtered by source, status, job and creation time."""
    conditions: list[ColumnElement[bool]] = []
    if source:
        conditions.append(Run.source == source)
    if status:
        conditions.append(Run.status == status)
    if job_id is not None:
        conditions.append(Run.job_id == job_id)
    conditions += time_bounds(Run.created_at, since, until)
    base = select(Run).where(*conditions)
    query = base
    if cursor is not None:
        payload = decode_cursor(cursor, "runs")
        query = query.where(Run.id < _cursor_int(payload, "id"))
        offset = 0
    query = query.order_by(Run.id.desc())
    return _page(session, query, base, offset=offset, limit=limit,
                 cursor_of=lambda row: {"t": "runs", "id": row.id})


def get_run(session: Session, run_id: int) -> Run:
    """One run; NotFound when there is none."""
    run = session.get(Run, run_id) if run_id <= BIGINT_MAX else None
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run
