"""The CSV dialects we recognise by their header, and how each one's row becomes a quote."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from shared.bounds import asset_text_problem
from shared.sources.parsing import ValueParseError, parse_decimal, parse_timestamp
from shared.batch.types import ParsedQuote

RowParser = Callable[[list[str], str, bytes], ParsedQuote]


@dataclass(frozen=True)
class CsvFormat:
    """A CSV dialect we recognise by its header."""

    name: str
    delimiter: str
    columns: int
    parse: RowParser


def req_timestamp(value: str, field: str) -> Any:
    """A required timestamp cell as an aware UTC datetime (ValueParseError when missing)."""
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
        source_asset_id = f"{symbol}:{name}" if name else symbol
        problem = asset_text_problem(source_asset_id, symbol, name or None)
        if problem is not None:
            raise ValueParseError(problem)
        return ParsedQuote(
            source_asset_id=source_asset_id,
            symbol=symbol,
            name=name or None,
            observed_at=req_timestamp(date, "Date"),
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
            observed_at=req_timestamp(snapped_at, "snapped_at"),
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
            observed_at=req_timestamp(t_close, "timeClose"),
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
