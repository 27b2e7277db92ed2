"""Reading one JSON market item (CoinGecko or CoinPaprika) into a quote or a reject reason."""
from __future__ import annotations

from decimal import Decimal
from typing import Any, Sequence

from shared.bounds import SOURCE_ASSET_ID_MAX, asset_text_problem, text_problem
from shared.batch.types import ParsedQuote, RawItem, Rejected, content_hash
from shared.sources.batching import Entry
from shared.sources.drift import DriftReport, flatten
from shared.sources.exact_json import JsonItem, to_datetime, to_decimal, to_int


def text_or_none(value: Any) -> str | None:
    """A stripped non-empty string, else None ("" is null upstream)."""
    return value.strip() if isinstance(value, str) and value.strip() else None


def parse_market_item(
    source: str,
    item: JsonItem,
    location: str,
    report: DriftReport,
    number_fields: Sequence[tuple[str, str]],
    rank_path: str,
) -> tuple[ParsedQuote | None, str | None, str]:
    """(quote, None, source_key) or (None, reject reason, source_key) for one item.

    `number_fields` maps ParsedQuote attributes to dotted paths in the item; drift renames
    that `report` mapped are followed.
    """
    value = item.value
    if not isinstance(value, dict):
        return None, "item is not a JSON object", location
    flat = flatten(value)
    coin_id = text_or_none(report.value(flat, "id"))
    # The raw record is keyed by the coin id only when the database can hold it as text.
    id_problem = text_problem(coin_id, SOURCE_ASSET_ID_MAX, "id") if coin_id else None
    key = location if id_problem or coin_id is None else coin_id
    if report.missing:
        names = ", ".join(repr(m) for m in report.missing)
        return None, f"missing field {names} (schema drift, no confident rename)", key
    if coin_id is None:
        return None, "missing or empty 'id'", key
    symbol = text_or_none(report.value(flat, "symbol"))
    if symbol is None:
        return None, "missing or empty 'symbol'", key
    name = text_or_none(report.value(flat, "name"))
    problem = id_problem or asset_text_problem(coin_id, symbol.upper(), name)
    if problem is not None:
        return None, problem, key
    if not report.has(flat, "last_updated"):
        return None, "missing field 'last_updated'", key
    try:
        observed_at = to_datetime(report.value(flat, "last_updated"))
    except ValueError as exc:
        return None, f"last_updated: {exc}", key
    if observed_at is None:
        # Without an observation time the quote cannot be placed in the time series.
        return None, "last_updated is null", key
    numbers, rank, problem = _read_numbers(flat, report, number_fields, rank_path)
    if problem is not None:
        return None, problem, key
    quote = ParsedQuote(
        source_asset_id=coin_id,
        symbol=symbol.upper(),
        name=name,
        observed_at=observed_at,
        raw_hash=content_hash(source, item.text),
        rank=rank,
        **numbers,
    )
    return quote, None, key


def _read_numbers(
    flat: dict[str, Any], report: DriftReport, number_fields: Sequence[tuple[str, str]],
    rank_path: str,
) -> tuple[dict[str, Decimal | None], int | None, str | None]:
    """The item's numbers (by ParsedQuote attribute) and rank, or why one is unusable."""
    numbers: dict[str, Decimal | None] = {}
    for attr, path in number_fields:
        try:
            numbers[attr] = to_decimal(report.value(flat, path))
        except ValueError as exc:
            return {}, None, f"{path}: {exc}"
    try:
        rank = to_int(report.value(flat, rank_path))
    except ValueError as exc:
        return {}, None, f"{rank_path}: {exc}"
    return numbers, rank, None


def to_entry(
    source: str,
    item: JsonItem,
    where: str,
    parsed: tuple[ParsedQuote | None, str | None, str],
    seen: set[str],
) -> Entry:
    """The raw record plus its quote, its reject, or nothing for an id already seen."""
    quote, reason, key = parsed
    # The raw layer keeps everything as received, usable or not.
    raw = RawItem(source_key=key, payload=item.text, hash=content_hash(source, item.text))
    if quote is None:
        return Entry(raw, reject=Rejected(location=where, reason=reason or "unusable",
                                          payload=item.text))
    if quote.source_asset_id in seen:
        # Ranks shift between pages of a ~30 s cache: the first sighting wins.
        return Entry(raw)
    seen.add(quote.source_asset_id)
    return Entry(raw, quote=quote)
