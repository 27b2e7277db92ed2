"""Per-quote quality checks (stale, implausible, jump, outlier): pure, one pass over a batch."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping, Sequence

# Flag kinds, in the order a reader should care about them.
STALE = "stale"
IMPLAUSIBLE = "implausible"
JUMP = "jump"
OUTLIER = "outlier"
FLAG_KINDS = (IMPLAUSIBLE, OUTLIER, JUMP, STALE)

_ZERO = Decimal(0)
_NUMERIC_FIELDS = ("price_usd", "market_cap_usd", "volume_24h_usd", "circulating_supply")

Flag = dict[str, Any]


@dataclass(frozen=True)
class QualityThresholds:
    """The limits the checks apply; `from_settings` reads them from Settings."""

    # Seconds between observation and fetch after which a source's quote is stale; 0 = off.
    stale_seconds: Mapping[str, int] = field(
        default_factory=lambda: {"coingecko": 3600, "coinpaprika": 3600, "csv": 0})
    jump_factor: float = 10.0
    outlier_pct: float = 10.0
    outlier_window_seconds: int = 3600
    mcap_volume_ratio: float = 1e8
    mcap_supply_factor: float = 2.0
    max_market_cap_usd: float = 1e13

    @classmethod
    def from_settings(cls, settings: Any) -> "QualityThresholds":
        """The thresholds configured in `settings` (shared.config.Settings)."""
        return cls(
            stale_seconds=dict(settings.quality_stale_seconds_by_source),
            jump_factor=settings.quality_jump_factor,
            outlier_pct=settings.quality_outlier_pct,
            outlier_window_seconds=settings.consensus_window_seconds,
            mcap_volume_ratio=settings.quality_mcap_volume_ratio,
            mcap_supply_factor=settings.quality_mcap_supply_factor,
            max_market_cap_usd=settings.quality_max_market_cap_usd,
        )


def make_flag(kind: str, reason: str, **evidence: Any) -> Flag:
    """A JSON-ready flag: its kind, a sentence saying why, and the numbers behind it."""
    return {"flag": kind, "reason": reason,
            "evidence": {k: _json_value(v) for k, v in evidence.items()}}


def _json_value(value: Any) -> Any:
    # Decimals as strings keep every digit; datetimes as ISO 8601.
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def quality_of(flags: Sequence[Flag] | None) -> dict[str, Any] | None:
    """The `quality` value stored with a quote: None when clean, else status and flags."""
    if not flags:
        return None
    return {"status": "flagged", "flags": list(flags)}


def flag_kinds(quality: Mapping[str, Any] | None) -> list[str]:
    """The flag kinds in a stored `quality` value (empty for a clean quote)."""
    if not quality:
        return []
    return sorted({f["flag"] for f in quality.get("flags", [])})


def stale_flag(source: str, observed_at: datetime, fetched_at: datetime | None,
               thresholds: QualityThresholds) -> Flag | None:
    """*stale* when the quote was observed more than the source's limit before its fetch."""
    limit = thresholds.stale_seconds.get(source, 0)
    if not limit or fetched_at is None:
        return None
    age = (fetched_at - observed_at).total_seconds()
    if age <= limit:
        return None
    return make_flag(STALE, f"observed {age:.0f} s before it was fetched (limit {limit} s)",
                     observed_at=observed_at, fetched_at=fetched_at, age_seconds=age,
                     threshold_seconds=limit, rule="fetched_at - observed_at > threshold")


def implausible_flags(quote: Any, thresholds: QualityThresholds) -> list[Flag]:
    """*implausible*: negative values, an absurd market cap, or one out of proportion."""
    flags: list[Flag] = []
    for name in _NUMERIC_FIELDS:
        value = getattr(quote, name, None)
        if value is not None and value < _ZERO:
            flags.append(make_flag(IMPLAUSIBLE, f"{name} is negative", field=name, value=value,
                                   rule=f"{name} >= 0"))
    mcap = getattr(quote, "market_cap_usd", None)
    if mcap is None or mcap <= _ZERO:
        return flags
    if mcap > thresholds.max_market_cap_usd:
        flags.append(make_flag(
            IMPLAUSIBLE, "market cap larger than any real asset's", field="market_cap_usd",
            value=mcap, threshold=thresholds.max_market_cap_usd,
            rule="market_cap_usd <= max_market_cap_usd"))
    volume = getattr(quote, "volume_24h_usd", None)
    # Zero volume means "unknown" in several sources (old CSV rows): no verdict on it.
    if volume is not None and volume > _ZERO:
        ratio = float(mcap / volume)
        if ratio > thresholds.mcap_volume_ratio:
            flags.append(make_flag(
                IMPLAUSIBLE, f"market cap is {ratio:.3g} times the 24h volume",
                field="market_cap_usd", market_cap_usd=mcap, volume_24h_usd=volume,
                ratio=ratio, threshold=thresholds.mcap_volume_ratio,
                rule="market_cap_usd / volume_24h_usd <= threshold"))
    price = getattr(quote, "price_usd", None)
    supply = getattr(quote, "circulating_supply", None)
    if price is not None and supply is not None and price > _ZERO and supply > _ZERO:
        ratio = float(mcap / (price * supply))
        factor = thresholds.mcap_supply_factor
        if ratio > factor or ratio < 1 / factor:
            flags.append(make_flag(
                IMPLAUSIBLE, f"market cap is {ratio:.3g} times price x circulating supply",
                field="market_cap_usd", market_cap_usd=mcap, price_usd=price,
                circulating_supply=supply, ratio=ratio, threshold=factor,
                rule="1/threshold <= market_cap_usd / (price_usd * circulating_supply) "
                     "<= threshold"))
    return flags


def jump_flag(price: Decimal | None, observed_at: datetime,
              previous: tuple[datetime, Decimal | None] | None,
              thresholds: QualityThresholds) -> Flag | None:
    """*jump* when the price moved by the jump factor or more since the previous quote."""
    if previous is None or price is None or price <= _ZERO:
        return None
    prev_at, prev_price = previous
    if prev_price is None or prev_price <= _ZERO or prev_at >= observed_at:
        return None
    factor = float(max(price / prev_price, prev_price / price))
    if factor < thresholds.jump_factor:
        return None
    return make_flag(JUMP, f"price moved {factor:.3g}x since the previous quote",
                     price_usd=price, previous_price_usd=prev_price,
                     previous_observed_at=prev_at, factor=factor,
                     threshold=thresholds.jump_factor,
                     rule="max(price/previous, previous/price) < threshold")


def check_batch(
    source: str,
    quotes: Sequence[Any],
    fetched_at: datetime | None,
    thresholds: QualityThresholds,
    previous: Mapping[Any, tuple[datetime, Decimal | None]] | None = None,
    key: Callable[[Any], Any] = lambda q: q.source_asset_id,
) -> dict[int, list[Flag]]:
    """Flags of one source's batch: {index in `quotes`: flags}, only for flagged quotes.

    `quotes` are objects with observed_at, price_usd, market_cap_usd, volume_24h_usd and
    circulating_supply (records.ParsedQuote, models.Quote, CurrentQuote). `previous` maps
    key(quote) to the (observed_at, price_usd) of the newest quote stored before this batch
    (one query per batch, by the caller); quotes of the same key inside the batch are
    compared in time order too, so a CSV file's overnight 100x is caught.
    """
    result: dict[int, list[Flag]] = {}
    last: dict[Any, tuple[datetime, Decimal | None]] = dict(previous or {})
    # Time order per key for the jump check; a batch is usually already sorted.
    order = sorted(range(len(quotes)), key=lambda i: quotes[i].observed_at)
    for index in order:
        quote = quotes[index]
        flags = implausible_flags(quote, thresholds)
        stale = stale_flag(source, quote.observed_at, fetched_at, thresholds)
        if stale:
            flags.append(stale)
        k = key(quote)
        jump = jump_flag(quote.price_usd, quote.observed_at, last.get(k), thresholds)
        if jump:
            flags.append(jump)
        # An implausible price must not become the base the next quote is judged against.
        if quote.price_usd is not None and not any(f["flag"] == IMPLAUSIBLE for f in flags):
            last[k] = (quote.observed_at, quote.price_usd)
        if flags:
            result[index] = flags
    return result


def outlier_flags(
    quotes: Iterable[Any], thresholds: QualityThresholds,
    flagged: Mapping[str, Sequence[Flag]] | None = None,
) -> dict[str, Flag]:
    """*outlier* flags of one asset's quotes across sources: {source: flag}.

    A quote is an outlier when its price is more than outlier_pct away from the median of
    the OTHER sources' clean prices observed within the window of it; at least two others
    are needed (with one other, nobody can tell which of the two is wrong: the consensus
    reports a disagreement instead). `flagged` (source -> flags) excludes already flagged
    quotes from the reference.
    """
    flagged = flagged or {}
    priced = [q for q in quotes if q.price_usd is not None and q.price_usd > _ZERO]
    result: dict[str, Flag] = {}
    window = thresholds.outlier_window_seconds
    for quote in priced:
        others = [
            o for o in priced
            if o.source != quote.source and not flagged.get(o.source)
            and abs((o.observed_at - quote.observed_at).total_seconds()) <= window
        ]
        if len(others) < 2:
            continue
        reference = statistics.median(Decimal(o.price_usd) for o in others)
        deviation = float(abs(Decimal(quote.price_usd) - reference) / reference * 100)
        if deviation > thresholds.outlier_pct:
            result[quote.source] = make_flag(
                OUTLIER, f"price is {deviation:.3g}% away from the other sources' median",
                price_usd=quote.price_usd, reference_price_usd=reference,
                deviation_pct=deviation, threshold_pct=thresholds.outlier_pct,
                sources=sorted(o.source for o in others), window_seconds=window,
                rule="|price - median(others in window)| / median <= threshold_pct")
    return result
