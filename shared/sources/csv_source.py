"""CSV source: every *.csv under CSV_DIR, streamed from the committed byte offset."""
from __future__ import annotations

import csv
from array import array
import hashlib
import itertools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from shared.config import Settings
from shared.parsing import ValueParseError, parse_decimal, parse_timestamp
from shared.records import (
    ASSET_SLOT,
    Batch,
    LineBlock,
    ParsedQuote,
    QuoteBlock,
    Rejected,
    content_hash,
)
from shared.sources.base import RunContext

log = logging.getLogger(__name__)

NAME = "csv"
# Bytes hashed at the head of a file and just before the committed offset: enough to tell an
# appended file (both unchanged) from a replaced one, without re-reading the whole file.
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 4 * 1024

RowParser = Callable[[list[str], str, bytes], ParsedQuote]

# The common Kaggle line, matched in one go: plain cells (no quoting, nothing COPY would have
# to escape) and plain non-negative decimals. Such a line is turned into COPY text directly and
# PostgreSQL parses its numbers, exactly as it parses str(Decimal); any other line (quoted
# cells, signs, missing values, odd spellings) takes the general path with its reject reasons.
# Possessive quantifiers: a cell never has to give characters back (a comma ends it), and not
# backtracking makes the match ~30% cheaper, the largest Python cost per line.
_PLAIN = r'[^,"\\\t\r\n\x00]'
_NUMBER = r"([0-9]{1,100}+(?:\.[0-9]{1,100}+)?+(?:[eE][-+]?[0-9]{1,4}+)?+)"
_KAGGLE_FAST = re.compile(
    rf"{_PLAIN}*+,({_PLAIN}*+),({_PLAIN}*+),({_PLAIN}++)" + rf",{_NUMBER}" * 6 + r"\Z"
)
_NULL4 = "\\N\t" * 4  # circulating_supply, total_supply, max_supply, rank
# Lines in a file's first batch (when CSV_BATCH_ROWS is larger); each next batch doubles.
FIRST_BATCH_ROWS = 2_000
# Bounds the per-file caches of rendered dates and identities (a file has few of each).
_CACHE_LIMIT = 100_000


@dataclass(frozen=True)
class CsvFormat:
    """A CSV dialect we recognise by its header."""

    name: str
    delimiter: str
    columns: int
    parse: RowParser


def _req_timestamp(value: str, field: str) -> Any:
    if not value.strip():
        raise ValueParseError(f"missing {field}")
    return parse_timestamp(value)


def _req_price(value: str, field: str) -> Any:
    price = parse_decimal(value)
    if price is None:
        raise ValueParseError(f"missing {field}")
    if price < 0:
        raise ValueParseError(f"negative {field}: {value!r}")
    return price


def _kaggle_parser(_symbol: str | None) -> RowParser:
    def parse(cells: list[str], _key: str, raw_hash: bytes) -> ParsedQuote:
        _sno, name, symbol, date, high, low, open_, close, volume, mcap = cells
        symbol = symbol.strip().upper()
        name = name.strip()
        if not symbol:
            raise ValueParseError("missing Symbol")
        return ParsedQuote(
            source_asset_id=f"{symbol}:{name}" if name else symbol,
            symbol=symbol,
            name=name or None,
            observed_at=_req_timestamp(date, "Date"),
            raw_hash=raw_hash,
            price_usd=_req_price(close, "Close"),
            close_usd=parse_decimal(close),
            open_usd=parse_decimal(open_),
            high_usd=parse_decimal(high),
            low_usd=parse_decimal(low),
            volume_24h_usd=parse_decimal(volume),
            market_cap_usd=parse_decimal(mcap),
        )

    return parse


def _coingecko_export_parser(symbol: str | None) -> RowParser:
    def parse(cells: list[str], _key: str, raw_hash: bytes) -> ParsedQuote:
        if symbol is None:
            raise ValueParseError("cannot tell the coin from the file name (want <symbol>-usd-max)")
        snapped_at, price, mcap, volume = cells
        return ParsedQuote(
            source_asset_id=symbol,
            symbol=symbol,
            name=None,
            observed_at=_req_timestamp(snapped_at, "snapped_at"),
            raw_hash=raw_hash,
            price_usd=_req_price(price, "price"),
            market_cap_usd=parse_decimal(mcap),
            volume_24h_usd=parse_decimal(volume),
        )

    return parse


def _coinmarketcap_parser(symbol: str | None) -> RowParser:
    def parse(cells: list[str], _key: str, raw_hash: bytes) -> ParsedQuote:
        if symbol is None:
            raise ValueParseError("cannot tell the coin from the file name")
        (_t_open, t_close, _t_high, _t_low, _name, open_, high, low, close, volume, mcap,
         supply, _ts) = cells
        return ParsedQuote(
            source_asset_id=symbol,
            symbol=symbol,
            name=None,
            observed_at=_req_timestamp(t_close, "timeClose"),
            raw_hash=raw_hash,
            price_usd=_req_price(close, "close"),
            close_usd=parse_decimal(close),
            open_usd=parse_decimal(open_),
            high_usd=parse_decimal(high),
            low_usd=parse_decimal(low),
            volume_24h_usd=parse_decimal(volume),
            market_cap_usd=parse_decimal(mcap),
            circulating_supply=parse_decimal(supply),
        )

    return parse


_HEADERS: dict[str, tuple[str, str, Callable[[str | None], RowParser]]] = {
    "sno,name,symbol,date,high,low,open,close,volume,marketcap": ("kaggle", ",", _kaggle_parser),
    "snapped_at,price,market_cap,total_volume": (
        "coingecko_export", ",", _coingecko_export_parser
    ),
    "timeopen;timeclose;timehigh;timelow;name;open;high;low;close;volume;marketcap;"
    "circulatingsupply;timestamp": ("coinmarketcap_export", ";", _coinmarketcap_parser),
}

_FILE_SYMBOL_PATTERNS = (
    re.compile(r"(?:^|[_\-.])([a-z0-9]{1,15})-usd-max", re.I),  # CoinGecko: btc-usd-max.csv
    re.compile(r"export_([a-z0-9]{1,15})_", re.I),  # coinmarketcap_export_btc_...
)


def symbol_from_filename(path: Path) -> str | None:
    """The coin symbol encoded in an export's file name, upper-cased, if there is one."""
    for pattern in _FILE_SYMBOL_PATTERNS:
        match = pattern.search(path.name)
        if match:
            return match.group(1).upper()
    return None


def detect_format(header_line: str, path: Path) -> CsvFormat | None:
    """The format a header line announces, or None for a header we do not know."""
    key = header_line.lstrip("\ufeff").strip().replace('"', "").lower()
    key = re.sub(r"\s+", "", key)
    entry = _HEADERS.get(key)
    if entry is None:
        return None
    name, delimiter, factory = entry
    return CsvFormat(name, delimiter, key.count(delimiter) + 1, factory(symbol_from_filename(path)))


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
    """Reads historical price files; each batch is a run of lines and their end offset."""

    name = NAME
    # Batches depend only on the files and ctx.max_records, so the run may prepare the next
    # batch while the current one is written (see shared.runs).
    read_ahead = True

    def __init__(self, settings: Settings) -> None:
        self.directory = settings.csv_dir
        self.batch_rows = settings.csv_batch_rows
        self.aliases_file = settings.asset_aliases_file

    def files(self) -> list[Path]:
        """The CSV files to read, in a stable order (the alias file is not data)."""
        if not self.directory.is_dir():
            return []
        skip = self.aliases_file.resolve() if self.aliases_file else None
        return sorted(p for p in self.directory.glob("*.csv") if p.resolve() != skip)

    def batches(self, ctx: RunContext) -> Iterator[Batch]:
        """Yield each file's new lines in batches, each with the offset it reaches."""
        for path in self.files():
            key = path.name
            yield from self._file_batches(path, key, ctx.checkpoints.get(key), ctx)

    def _file_batches(
        self, path: Path, key: str, checkpoint: dict[str, Any] | None, ctx: RunContext
    ) -> Iterator[Batch]:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            offset = resume_offset(handle, size, checkpoint)
            if checkpoint and offset == 0 and int(checkpoint.get("offset", 0)) > 0:
                log.info("csv file %s changed before the committed offset: re-reading it", key)
            if offset and offset == size:
                return
            handle.seek(0)
            header_bytes = handle.readline()
            header = header_bytes.decode("utf-8", errors="replace")
            fmt = detect_format(header, path)
            if fmt is None:
                yield self._rejected_file(handle, key, header)
                return
            line_no = int(checkpoint.get("line", 1)) if offset and checkpoint else 1
            # The offset the last checkpoint records (the committed one if it still holds,
            # then each batch's): an end of file there needs no checkpoint-only batch.
            recorded = offset or -1
            if not offset:
                offset = len(header_bytes)
            handle.seek(offset)
            reader = _LineReader(key, fmt, ctx.run_id)
            # Batches start small and double up to CSV_BATCH_ROWS: writing starts while the
            # rest is still parsed, and a short append spans several batches that the writers
            # can commit side by side (shared.pipeline).
            batch_rows = min(self.batch_rows, FIRST_BATCH_ROWS)
            while True:
                limit = batch_rows
                if ctx.max_records is not None:
                    limit = max(1, min(batch_rows, ctx.max_records - ctx.records_done))
                lines: list[tuple[int, str]] = []
                # Blank lines do not count towards the batch size: read until it is full.
                while len(lines) < limit:
                    chunk = list(itertools.islice(handle, limit - len(lines)))
                    if not chunk:
                        break
                    block = b"".join(chunk)
                    offset += len(block)
                    # One decode per chunk instead of per line. Splitting on "\n" only (not
                    # splitlines) keeps other separators inside their line, as per-line reads do.
                    texts = block.decode("utf-8", errors="replace").split("\n")
                    if texts[-1] == "":
                        texts.pop()  # the chunk ended with a newline
                    for text in texts:
                        line_no += 1
                        text = text.rstrip("\r")
                        if text and not text.isspace():
                            lines.append((line_no, text))
                if not lines:
                    # Blank trailing lines still move the offset; record it once.
                    if offset != recorded:
                        yield Batch(key, self._checkpoint(handle, offset, line_no, fmt))
                    return
                yield reader.batch(lines, self._checkpoint(handle, offset, line_no, fmt))
                recorded = offset
                batch_rows = min(self.batch_rows, batch_rows * 2)
                handle.seek(offset)

    def _checkpoint(
        self, handle: BinaryIO, offset: int, line_no: int, fmt: CsvFormat
    ) -> dict[str, Any]:
        value: dict[str, Any] = {"offset": offset, "line": line_no, "format": fmt.name}
        value.update(fingerprint(handle, offset))
        return value

    def _rejected_file(self, handle: BinaryIO, key: str, header: str) -> Batch:
        size = handle.seek(0, os.SEEK_END)
        reason = "unrecognised CSV header; file skipped until it changes"
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
        self.quote_prefix = f"{ASSET_SLOT}\t{NAME}\t{run_id}\t"
        # content_hash(NAME, key, text) without re-hashing the constant part for every line.
        self.hash_base = hashlib.sha256(f"{NAME}\x1f{key}\x1f".encode())
        self.dates: dict[str, str | None] = {}
        self.identities: dict[tuple[str, str], tuple[str, str, str | None] | None] = {}

    def batch(self, lines: list[tuple[int, str]], checkpoint: dict[str, Any]) -> Batch:
        """The batch for these (line number, text) pairs, ending at `checkpoint`."""
        batch = Batch(self.key, checkpoint)
        hashes: list[str] = []
        blocks: dict[str, tuple[tuple[str, str, str | None], list[str], list[str]]] = {}
        slow: list[tuple[int, str, str]] = []
        fast, dates, identities = self.fast, self.dates, self.identities
        hash_base, quote_prefix = self.hash_base, self.quote_prefix
        for line_no, text in lines:
            digest = hash_base.copy()
            digest.update(text.encode())
            digest.update(b"\x1f")
            hex_hash = digest.hexdigest()
            hashes.append(hex_hash)
            match = fast(text) if fast is not None else None
            if match is not None:
                name, symbol, date, high, low, open_, close, volume, mcap = match.groups()
                if date in dates:
                    stamp = dates[date]
                else:
                    stamp = dates[date] = _render_timestamp(date)
                if (name, symbol) in identities:
                    identity = identities[(name, symbol)]
                else:
                    identity = identities[(name, symbol)] = _kaggle_identity(name, symbol)
                if stamp is not None and identity is not None:
                    sid = identity[0]
                    entry = blocks.get(sid)
                    if entry is None:
                        entry = blocks[sid] = (identity, [], [])
                    entry[1].append(
                        f"{quote_prefix}{stamp}\t{sid}\t{close}\t{mcap}\t{volume}\t{_NULL4}"
                        f"{open_}\t{high}\t{low}\t{close}\t\\\\x{hex_hash}\n"
                    )
                    entry[2].append(stamp)
                    continue
            slow.append((line_no, text, hex_hash))
        if len(dates) > _CACHE_LIMIT:
            dates.clear()
        if len(identities) > _CACHE_LIMIT:
            identities.clear()
        batch.raw_lines = LineBlock(self.key, array("i", [number for number, _ in lines]),
                                    "\n".join([text for _, text in lines]),
                                    bytes.fromhex("".join(hashes)))
        batch.quote_blocks = [
            QuoteBlock(sid, symbol, name, "".join(rows), len(rows), stamps)
            for (sid, symbol, name), rows, stamps in blocks.values()
        ]
        if slow:
            self._parse_slow(batch, slow)
        return batch

    def _parse_slow(self, batch: Batch, lines: list[tuple[int, str, str]]) -> None:
        """The general path: csv module, exact Decimal parsing, a reason for every reject."""
        fmt = self.fmt
        rows = csv.reader((text for _, text, _ in lines), delimiter=fmt.delimiter)
        for (line_no, text, hex_hash), cells in zip(lines, rows):
            location = f"{self.key}:{line_no}"
            if len(cells) != fmt.columns:
                reason = f"expected {fmt.columns} columns, got {len(cells)}"
                batch.rejects.append(Rejected(location, reason, text))
                continue
            try:
                batch.quotes.append(fmt.parse(cells, location, bytes.fromhex(hex_hash)))
            except (ValueParseError, ValueError) as exc:
                batch.rejects.append(Rejected(location, str(exc), text))


def _render_timestamp(value: str) -> str | None:
    """A Date cell as ISO 8601 UTC text, or None when it is not a timestamp (general path)."""
    try:
        return str(_req_timestamp(value, "Date").isoformat())
    except ValueError:
        return None


def _kaggle_identity(name: str, symbol: str) -> tuple[str, str, str | None] | None:
    """(source asset id, symbol, name) as the Kaggle parser derives them; None: general path."""
    symbol, name = symbol.strip().upper(), name.strip()
    if not symbol:
        return None
    return (f"{symbol}:{name}" if name else symbol), symbol, name or None
