"""The one owner of the bulk writes' COPY formats: columns, text escaping, binary rows, staging.

Quotes go in as PostgreSQL COPY text; CSV raw lines and API items as binary COPY (one
raw_line_blocks row per batch, one raw_item_blocks row per page). Every module that renders or
reads such data takes the column order, the cell encoding and the staging table from here. The
CSV fast path (shared.sources.csv_source) renders its lines with one inline f-string built from
the pieces below (QUOTE_LINE_HEAD, NULL, BYTEA_HEX, OHLC_ABSENT), because a call per line would
cost about a tenth of its parse time; tests/shared/batch/test_csv_copy_format.py checks that its
lines equal quote_line's.
"""
from __future__ import annotations

import struct
from datetime import datetime
from itertools import chain
from decimal import Decimal
from typing import Any, Iterable, Sequence

from shared.batch.types import ParsedQuote, QuoteBlock

# Column -> type of the COPY text of quotes.
QUOTE_COLUMN_TYPES: dict[str, str] = {
    "asset_id": "bigint", "source": "text", "run_id": "bigint", "observed_at": "timestamptz",
    "source_asset_id": "text", "price_usd": "numeric", "market_cap_usd": "numeric",
    "volume_24h_usd": "numeric", "circulating_supply": "numeric", "total_supply": "numeric",
    "max_supply": "numeric", "rank": "integer", "open_usd": "numeric", "high_usd": "numeric",
    "low_usd": "numeric", "close_usd": "numeric", "raw_hash": "bytea",
    # A flagged quote's flags in stored form (shared.quality.compact); NULL when clean.
    "flag_set": "bigint", "jump_base_price": "double precision", "jump_base_us": "bigint",
}
QUOTE_COPY_COLUMNS: tuple[str, ...] = tuple(QUOTE_COLUMN_TYPES)
QUOTE_COLUMNS_SQL = ", ".join(QUOTE_COPY_COLUMNS)

# quotes.raw_hash keeps the first 8 bytes of its raw record's SHA-256 (the raw blocks keep all
# 32, and say which record it is). It only tells whether a stored quote came from the same raw
# record as a staged one with the same key, where 64 bits leave a 2^-64 chance of a false
# "same"; 9 bytes a row instead of 33 (rows written before migration 0024 keep 32: the
# comparisons take the first 8 of the stored value, STORED_HASH_PREFIX).
QUOTE_HASH_BYTES = 8
QUOTE_HASH_HEX = 2 * QUOTE_HASH_BYTES
STORED_HASH_PREFIX = f"substring(q.raw_hash FROM 1 FOR {QUOTE_HASH_BYTES})"

# Starts every line of a QuoteBlock: the loader replaces it with the asset id it resolves.
# NUL cannot occur in PostgreSQL text, so it can never be confused with data.
ASSET_SLOT = "\x00"
NULL = "\\N"
# A bytea cell in hex form, its backslash escaped for COPY text: BYTEA_HEX + bytes.hex().
BYTEA_HEX = "\\\\x"
# The quote columns a price file (open/high/low/close) has no value for, between
# volume_24h_usd and open_usd: rendered as NULL cells.
OHLC_ABSENT: tuple[str, ...] = QUOTE_COPY_COLUMNS[
    QUOTE_COPY_COLUMNS.index("volume_24h_usd") + 1:QUOTE_COPY_COLUMNS.index("open_usd")]
OHLC_ABSENT_CELLS = f"{NULL}\t" * len(OHLC_ABSENT)
# The flag cells after raw_hash (flag_set, jump_base_price, jump_base_us): those of a clean
# quote; a flagged one's are flag_cells(...).
FLAG_COLUMNS: tuple[str, ...] = QUOTE_COPY_COLUMNS[QUOTE_COPY_COLUMNS.index("raw_hash") + 1:]
CLEAN_FLAG_CELLS = f"\t{NULL}" * len(FLAG_COLUMNS)
CLEAN_LINE_END = CLEAN_FLAG_CELLS + "\n"

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_escape(value: str) -> str:
    """`value` as a cell of PostgreSQL's COPY text format (backslash, tab, newlines escaped)."""
    return value.translate(_COPY_ESCAPES)


def cell(value: Any) -> str:
    """One value in COPY text format (Decimal via str keeps every digit)."""
    if value is None:
        return NULL
    if isinstance(value, bytes):
        return BYTEA_HEX + value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (Decimal, int)):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # round-trips exactly through float8
    return copy_escape(str(value))


def text_line(values: Iterable[Any]) -> str:
    """One line of COPY text: the values' cells, tab-separated, newline-terminated."""
    return "\t".join(cell(v) for v in values) + "\n"


def quote_line(asset_id: int | str, source: str, run_id: int, q: ParsedQuote,
               flags: tuple[int, float | None, int | None] | None = None) -> str:
    """A quote as a line of QUOTE_COPY_COLUMNS; `flags`: its (flag set, jump base price, jump
    base age in microseconds), None when clean."""
    return text_line((
        asset_id, source, run_id, q.observed_at, q.source_asset_id, q.price_usd,
        q.market_cap_usd, q.volume_24h_usd, q.circulating_supply, q.total_supply,
        q.max_supply, q.rank, q.open_usd, q.high_usd, q.low_usd, q.close_usd,
        q.raw_hash[:QUOTE_HASH_BYTES], *(flags or (None, None, None)),
    ))


def block_copy_text(block: QuoteBlock, rows: Sequence[int] = (),
                    cells: Iterable[str] = ()) -> str:
    """A QuoteBlock's COPY text, with these rows' (by index) flag cells and newline in place of
    the clean ones: the lines and their ends joined once, the ends set in one pass when the
    rows are one run (a block whose every line is flagged)."""
    lines = block.lines if block.lines or not block.text else block.text.split(CLEAN_LINE_END)[:-1]
    endings = [CLEAN_LINE_END] * len(lines)
    if rows and list(rows) == list(range(rows[0], rows[0] + len(rows))):
        endings[rows[0]:rows[-1] + 1] = cells
    else:
        for row, cell in zip(rows, cells):
            endings[row] = cell
    return "".join(chain.from_iterable(zip(lines, endings)))


def flag_cells(flag_set: int, jump_base_price: Any, jump_base_us: Any) -> str:
    """The flag cells of a flagged quote's line (in place of CLEAN_FLAG_CELLS)."""
    return "".join(f"\t{cell(v)}" for v in (flag_set, jump_base_price, jump_base_us))


def quote_line_head(source: str, run_id: int) -> str:
    """The first cells of a QuoteBlock line (asset slot, source, run id), with their tabs."""
    return f"{ASSET_SLOT}\t{copy_escape(source)}\t{run_id}\t"


def _staging_table(name: str, types: dict[str, str]) -> str:
    columns = ", ".join(f"{column} {kind}" for column, kind in types.items())
    return f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns}) ON COMMIT DELETE ROWS;"


# A session-local staging table with the layout of the COPY text: rows vanish at commit, the
# definition stays for the connection's life. Only used when a batch repeats stored quotes.
STAGE_QUOTES = "stage_quotes"
STAGING_DDL = _staging_table(STAGE_QUOTES, QUOTE_COLUMN_TYPES)

# Big reads: each read of the COPY data takes the GIL from the read-ahead thread, and every
# hand-over can wait a whole switch interval (5 ms) while PostgreSQL sits idle.
COPY_CHUNK_BYTES = 16 << 20

# -- binary COPY (raw blocks) --------------------------------------------------------------

LINE_BLOCK_COLUMNS: tuple[str, ...] = (
    "source", "file_key", "line_numbers", "payload", "line_hashes", "run_id")
# PostgreSQL's binary COPY format: signature, flags, header extension length; -1 field count.
PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
PGCOPY_TRAILER = struct.pack("!h", -1)
INT8 = struct.Struct("!q")
_INT4_OID = 23
_TEXT_OID = 25
ITEM_BLOCK_COLUMNS: tuple[str, ...] = (
    "source", "items", "source_keys", "payload", "item_hashes", "run_id")


def binary_row(*fields: bytes) -> bytes:
    """One row of binary COPY: field count, then each field's length and bytes."""
    parts = [struct.pack("!h", len(fields))]
    for value in fields:
        parts.append(struct.pack("!i", len(value)))
        parts.append(value)
    return b"".join(parts)


def int4_array(values: Sequence[int]) -> bytes:
    """A one-dimensional int4[] in binary COPY form (no NULLs, lower bound 1)."""
    count = len(values)
    flat = [4] * (2 * count)  # each element: its length (4), then its value
    flat[1::2] = values
    return struct.pack("!5i", 1, 0, _INT4_OID, count, 1) + struct.pack(f"!{2 * count}i", *flat)


def text_array(values: Sequence[str]) -> bytes:
    """A one-dimensional text[] in binary COPY form (no NULLs, lower bound 1)."""
    encoded = [value.encode() for value in values]
    head = struct.pack("!5i", 1, 0, _TEXT_OID, len(encoded), 1)
    return head + b"".join(struct.pack("!i", len(e)) + e for e in encoded)


def binary_copy(*rows: bytes) -> bytes:
    """The whole binary COPY data of these rows: header, rows, trailer."""
    return b"".join((PGCOPY_HEADER, *rows, PGCOPY_TRAILER))
