"""CSV source: every *.csv under CSV_DIR, streamed from the committed byte offset."""
from __future__ import annotations

import csv
from array import array
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from shared.bounds import CELL_MAX_CHARS, NUMERIC_INTEGER_DIGITS, NUMERIC_SCALE, asset_text_problem
from shared.config import Settings
from shared.sources.parsing import ValueParseError
from shared.batch.copy_format import BYTEA_HEX, OHLC_ABSENT_CELLS, QUOTE_HASH_HEX, quote_line_head
from shared.batch.types import Batch, LineBlock, QuoteBlock, Rejected, content_hash
from shared.sources.base import RunContext
from shared.sources.csv_formats import CsvFormat, detect_format, req_timestamp
from shared.sources.csv_files import (
    PIECE_BYTES,
    CsvEntry,
    FileProblem,
    LineScanner,
    list_entries,
    open_entry,
    preview,
    storable,
)

log = logging.getLogger(__name__)

NAME = "csv"
# Bytes hashed at the head of a file and just before the committed offset: enough to tell an
# appended file (both unchanged) from a replaced one, without re-reading the whole file.
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 4 * 1024

# The common Kaggle line, matched in one go: plain cells (no quoting, nothing COPY would have
# to escape) and plain non-negative decimals. Such a line is turned into COPY text directly and
# PostgreSQL parses its numbers, exactly as it parses str(Decimal); any other line (quoted
# cells, signs, missing values, odd spellings) takes the general path with its reject reasons.
# Possessive quantifiers: a cell never has to give characters back (a comma ends it), and not
# backtracking makes the match ~30% cheaper, the largest Python cost per line. A number matches
# only when the quote columns surely hold it (shared.bounds): its digits, shifted by a one-digit
# exponent, stay within the bounds; any other number is checked exactly by the general path.
# The exponent may have a leading zero: Python writes 5.8e-05 (a price below 0.0001).
_PLAIN = r'[^,"\\\t\r\n\x00]'
_NUMBER = (rf"([0-9]{{1,{NUMERIC_INTEGER_DIGITS - 9}}}+(?:\.[0-9]{{1,{NUMERIC_SCALE - 9}}}+)?+"
           r"(?:[eE][-+]?0?[0-9])?+)")
_KAGGLE_FAST = re.compile(
    rf"{_PLAIN}*+,({_PLAIN}*+),({_PLAIN}*+),({_PLAIN}++)" + rf",{_NUMBER}" * 6 + r"\Z"
)
# The fast path's COPY text pieces (shared.batch.copy_format owns the layout; see quote_line).
_ABSENT = OHLC_ABSENT_CELLS  # circulating_supply, total_supply, max_supply, rank
_HASH_CELL = "\t" + BYTEA_HEX  # before raw_hash, in hex (its first QUOTE_HASH_HEX digits)
# Lines in a file's first batch (when CSV_BATCH_ROWS is larger); each next batch doubles, or
# is full size after a batch of fewer than WIDE_ROWS_PER_COIN rows per coin.
FIRST_BATCH_ROWS = 2_000
WIDE_ROWS_PER_COIN = 8
_UNSEEN: Any = object()  # not in a cache yet (None is a cached answer: the general path)
# Bounds the per-file caches of rendered dates and identities (a file has few of each).
_CACHE_LIMIT = 100_000


def _digest(handle: BinaryIO, start: int, length: int) -> str:
    handle.seek(start)
    return hashlib.sha256(handle.read(length)).hexdigest()


def fingerprint(handle: BinaryIO, offset: int) -> dict[str, str]:
    """Hashes of the file's head and of the bytes just before `offset`."""
    return {
        "head_sha256": _digest(handle, 0, min(HEAD_BYTES, offset)),
        "tail_sha256": _digest(handle, max(0, offset - TAIL_BYTES), min(TAIL_BYTES, offset)),
    }


def resume_offset(handle: BinaryIO, size: int, checkpoint: dict[str, Any] | None) -> int:
    """Where to continue reading: the committed offset, or 0 if the file was replaced."""
    if not checkpoint:
        return 0
    offset = int(checkpoint.get("offset", 0))
    if offset <= 0 or offset > size:
        return 0
    if fingerprint(handle, offset) != {
        "head_sha256": checkpoint.get("head_sha256"),
        "tail_sha256": checkpoint.get("tail_sha256"),
    }:
        return 0
    return offset


class CsvSource:
    """Reads historical price files; each batch is a run of lines and their end offset.

    Files and lines are untrusted (shared.sources.csv_files): an entry that cannot be read
    (not a regular file, a link, a bad name, vanished, unreadable) becomes one file-level
    reject and the run goes on with the next file; `partial_reason` then says why the run is
    partial. Every line that cannot be stored is a reject with file, line and reason.
    """

    name = NAME
    # Batches depend only on the files and ctx.max_records, so the run may prepare the next
    # batch while the current one is written (see shared.ingest.execute).
    read_ahead = True

    def __init__(self, settings: Settings) -> None:
        self.directory = settings.csv_dir
        self.batch_rows = settings.csv_batch_rows
        self.aliases_file = settings.asset_aliases_file
        # "<file>: <reason>" of every file this run could not read.
        self.unreadable: list[str] = []

    @property
    def partial_reason(self) -> str | None:
        """Why the run is partial (files it could not read, short and path-free), or None."""
        if not self.unreadable:
            return None
        shown = "; ".join(self.unreadable[:5])
        more = len(self.unreadable) - 5
        return f"csv: {shown}" + (f"; and {more} more unreadable files" if more > 0 else "")

    def files(self) -> list[CsvEntry]:
        """The CSV entries to read, by name (the alias file is not data), each judged."""
        skip = None
        if self.aliases_file is not None and (
                self.aliases_file.parent.resolve() == self.directory.resolve()):
            skip = self.aliases_file.name
        return list_entries(self.directory, skip)

    def batches(self, ctx: RunContext) -> Iterator[Batch]:
        """Yield each file's new lines in batches, each with the offset it reaches."""
        self.unreadable = []
        for entry in self.files():
            yield from self.entry_batches(entry, ctx)

    def entry_batches(self, entry: CsvEntry, ctx: RunContext) -> Iterator[Batch]:
        """One entry's batches, or a single file-level reject when it cannot be read."""
        key = entry.key
        # The checkpoint this file's batches last moved to (only this generator moves it).
        last = ctx.checkpoints.get(key)
        try:
            handle = open_entry(self.directory, entry)
        except FileProblem as exc:
            yield self._unreadable(key, str(exc), last)
            return
        with handle:
            try:
                for batch in self._file_batches(handle, key, last, ctx):
                    last = batch.checkpoint
                    yield batch
            except OSError as exc:  # EIO and the like, mid-file: what was read stands
                log.warning("csv file %s: read failed: %s", key, exc)
                yield self._unreadable(key, f"read failed ({exc.strerror or 'I/O error'})",
                                       last)

    def _unreadable(self, key: str, reason: str, checkpoint: dict[str, Any] | None) -> Batch:
        """A file-level reject; the file's checkpoint stays where it was (or starts at 0)."""
        log.warning("csv file %s skipped: %s", key, reason)
        self.unreadable.append(f"{key}: {reason}")
        value = checkpoint if checkpoint is not None else {"offset": 0, "line": 0, "format": None}
        return Batch(key, value, rejects=[Rejected(key, reason, "")])

    def _file_batches(
        self, handle: BinaryIO, key: str, checkpoint: dict[str, Any] | None, ctx: RunContext
    ) -> Iterator[Batch]:
        size = os.fstat(handle.fileno()).st_size
        offset = resume_offset(handle, size, checkpoint)
        if checkpoint and offset == 0 and int(checkpoint.get("offset", 0)) > 0:
            log.info("csv file %s changed before the committed offset: re-reading it", key)
        if offset and offset == size:
            return
        handle.seek(0)
        header_bytes = handle.readline(PIECE_BYTES)
        if len(header_bytes) == PIECE_BYTES and not header_bytes.endswith(b"\n"):
            yield self._rejected_file(handle, key, preview(header_bytes),
                                      "header line too long")
            return
        header = storable(header_bytes.decode("utf-8", errors="replace"))
        fmt = detect_format(header, Path(key))
        if fmt is None:
            yield self._rejected_file(handle, key, header, "unrecognised CSV header")
            return
        line_no = int(checkpoint.get("line", 1)) if offset and checkpoint else 1
        # The offset the last checkpoint records (the committed one if it still holds,
        # then each batch's): an end of file there needs no checkpoint-only batch.
        recorded = offset or -1
        if not offset:
            offset = len(header_bytes)
        handle.seek(offset)
        scanner = LineScanner(handle, offset, line_no)
        reader = _LineReader(key, fmt, ctx.run_id)
        # Batches start small and double up to CSV_BATCH_ROWS: writing starts while the
        # rest is still parsed, and a short append spans several batches that the writers
        # can commit side by side (shared.ingest.pipeline). A batch of a few rows per coin
        # (an append of a few days to a file of many coins) costs its writer per coin, not per
        # row (each coin's identity, jump check and publish): the next one is full size.
        batch_rows = min(self.batch_rows, FIRST_BATCH_ROWS)
        while True:
            limit = batch_rows
            if ctx.max_records is not None:
                limit = max(1, min(batch_rows, ctx.max_records - ctx.records_done))
            # Blank lines do not count towards the batch size: read until it is full.
            lines, flagged = scanner.read(limit)
            offset = scanner.offset
            if not lines:
                # Blank trailing lines still move the offset; record it once.
                if offset != recorded:
                    yield Batch(key, self._checkpoint(handle, offset, scanner.line_no, fmt))
                return
            batch = reader.batch(lines, flagged,
                                 self._checkpoint(handle, offset, scanner.line_no, fmt))
            wide = batch.quote_count < WIDE_ROWS_PER_COIN * len(batch.quote_blocks)
            yield batch
            recorded = offset
            batch_rows = self.batch_rows if wide else min(self.batch_rows, batch_rows * 2)
            handle.seek(offset)

    def _checkpoint(
        self, handle: BinaryIO, offset: int, line_no: int, fmt: CsvFormat
    ) -> dict[str, Any]:
        value: dict[str, Any] = {"offset": offset, "line": line_no, "format": fmt.name}
        value.update(fingerprint(handle, offset))
        return value

    def _rejected_file(self, handle: BinaryIO, key: str, header: str, why: str) -> Batch:
        size = handle.seek(0, os.SEEK_END)
        reason = f"{why}; file skipped until it changes"
        value: dict[str, Any] = {"offset": size, "line": 0, "format": None}
        value.update(fingerprint(handle, size))
        text = header.rstrip("\r\n")
        return Batch(
            key, value,
            raw_lines=LineBlock(key, array("i", [1]), text, content_hash(NAME, key, text)),
            rejects=[Rejected(f"{key}:1", reason, text)],
        )


class _LineReader:
    """Turns a file's lines into a batch: its raw lines, quotes as COPY text, and rejects."""

    def __init__(self, key: str, fmt: CsvFormat, run_id: int) -> None:
        self.key, self.fmt = key, fmt
        self.fast = _KAGGLE_FAST.match if fmt.name == "kaggle" else None
        self.quote_prefix = quote_line_head(NAME, run_id)
        # content_hash(NAME, key, text) without re-hashing the constant part for every line.
        self.hash_base = hashlib.sha256(f"{NAME}\x1f{key}\x1f".encode())
        self.dates: dict[str, str | None] = {}
        self.identities: dict[tuple[str, str], tuple[str, str, str | None] | None] = {}

    def batch(self, lines: list[tuple[int, str]], flagged: dict[int, str],
              checkpoint: dict[str, Any]) -> Batch:
        """The batch for these (line number, text) pairs, ending at `checkpoint`.

        `flagged` holds the reject reason of lines that cannot be used as read (see
        csv_files.LineScanner): they are stored as raw lines and rejected unparsed.
        """
        batch = Batch(self.key, checkpoint)
        hashes: list[str] = []
        blocks: dict[str, tuple[tuple[str, str, str | None], list[str], list[str],
                                list[str]]] = {}
        slow: list[tuple[int, str, str]] = []
        fast, dates, identities = self.fast, self.dates, self.identities
        hash_base, quote_prefix = self.hash_base, self.quote_prefix
        add_hash, add_slow = hashes.append, slow.append
        # A file's lines mostly come a coin at a time: the last coin's cells and its block's
        # list appends are reused while they repeat (no tuple, lookups or method lookups).
        last_name = last_symbol = ""
        head = ""
        add_row: Callable[[str], None] | None = None
        add_stamp = add_price = add_hash
        for line_no, text in lines:
            digest = hash_base.copy()
            digest.update(text.encode())
            digest.update(b"\x1f")
            hex_hash = digest.hexdigest()
            add_hash(hex_hash)
            if flagged and line_no in flagged:
                batch.rejects.append(Rejected(f"{self.key}:{line_no}", flagged[line_no], text))
                continue
            # A line no longer than one cell may be cannot hold an oversize cell; a longer one
            # takes the general path, which checks every cell (_NUMBER bounds the numbers).
            match = fast(text) if fast is not None and len(text) <= CELL_MAX_CHARS else None
            if match is not None:
                name, symbol, date, high, low, open_, close, volume, mcap = match.groups()
                stamp = dates.get(date, _UNSEEN)
                if stamp is _UNSEEN:
                    stamp = dates[date] = _render_timestamp(date)
                if add_row is None or symbol != last_symbol or name != last_name:
                    key = (name, symbol)
                    identity = identities.get(key, _UNSEEN)
                    if identity is _UNSEEN:
                        identity = identities[key] = _kaggle_identity(name, symbol)
                    if identity is None:
                        add_row = None
                    else:
                        sid = identity[0]
                        entry = blocks.get(sid)
                        if entry is None:
                            entry = blocks[sid] = (identity, [], [], [])
                        last_name, last_symbol, head = name, symbol, f"\t{sid}\t"
                        add_row, add_stamp, add_price = (
                            entry[1].append, entry[2].append, entry[3].append)
                if stamp is not None and add_row is not None:
                    # QUOTE_COPY_COLUMNS from observed_at to raw_hash; inline for speed (see
                    # shared.batch.copy_format): price_usd and close_usd are both Close. The
                    # flag cells and newline are the loader's (block_copy_text).
                    add_row(f"{quote_prefix}{stamp}{head}{close}\t{mcap}\t{volume}\t{_ABSENT}"
                            f"{open_}\t{high}\t{low}\t{close}{_HASH_CELL}"
                            f"{hex_hash[:QUOTE_HASH_HEX]}")
                    add_stamp(stamp)
                    # The price's text, for the jump check (shared.quality.flags).
                    add_price(close)
                    continue
            add_slow((line_no, text, hex_hash))
        self._fill(batch, lines, hashes, blocks)
        if slow:
            self._parse_slow(batch, slow)
        return batch

    def _fill(
        self, batch: Batch, lines: list[tuple[int, str]], hashes: list[str],
        blocks: dict[str, tuple[tuple[str, str, str | None], list[str], list[str],
                                list[str]]],
    ) -> None:
        """Set the batch's raw lines and quote blocks; keep the per-file caches bounded."""
        if len(self.dates) > _CACHE_LIMIT:
            self.dates.clear()
        if len(self.identities) > _CACHE_LIMIT:
            self.identities.clear()
        batch.raw_lines = LineBlock(self.key, array("i", [number for number, _ in lines]),
                                    "\n".join([text for _, text in lines]),
                                    bytes.fromhex("".join(hashes)))
        batch.quote_blocks = [
            QuoteBlock(sid, symbol, name, "", len(rows), stamps, prices, rows)
            for (sid, symbol, name), rows, stamps, prices in blocks.values()
        ]

    def _parse_slow(self, batch: Batch, lines: list[tuple[int, str, str]]) -> None:
        """The general path: csv module, exact Decimal parsing, a reason for every reject."""
        fmt = self.fmt
        for line_no, text, hex_hash in lines:
            location = f"{self.key}:{line_no}"
            # One reader per line: an unclosed quote must not swallow the lines after it.
            try:
                cells = next(csv.reader([text], delimiter=fmt.delimiter), [])
            except csv.Error as exc:  # e.g. a bare carriage return inside a cell
                reason = f"not valid CSV: {str(exc).split(' - ')[0]}"
                batch.rejects.append(Rejected(location, reason, text))
                continue
            if len(cells) != fmt.columns:
                reason = f"expected {fmt.columns} columns, got {len(cells)}"
                batch.rejects.append(Rejected(location, reason, text))
                continue
            long = next((n for n, cell in enumerate(cells, 1) if len(cell) > CELL_MAX_CHARS), 0)
            if long:
                reason = f"cell {long} longer than {CELL_MAX_CHARS} characters"
                batch.rejects.append(Rejected(location, reason, text))
                continue
            try:
                batch.quotes.append(fmt.parse(cells, location, bytes.fromhex(hex_hash)))
            except (ValueParseError, ValueError) as exc:
                batch.rejects.append(Rejected(location, str(exc), text))


def _render_timestamp(value: str) -> str | None:
    """A Date cell as ISO 8601 UTC text, or None when it is not a timestamp (general path)."""
    try:
        return str(req_timestamp(value, "Date").isoformat())
    except ValueError:
        return None


def _kaggle_identity(name: str, symbol: str) -> tuple[str, str, str | None] | None:
    """(source asset id, symbol, name) as the Kaggle parser derives them; None: general path."""
    symbol, name = symbol.strip().upper(), name.strip()
    if not symbol:
        return None
    source_asset_id = f"{symbol}:{name}" if name else symbol
    if asset_text_problem(source_asset_id, symbol, name or None) is not None:
        return None
    return source_asset_id, symbol, name or None
