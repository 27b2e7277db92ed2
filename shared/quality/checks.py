"""Per-quote quality checks (stale, implausible, jump, outlier): pure, one pass over a batch."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import islice
from operator import le, mul, truediv
from typing import Any, Callable, Iterable, Mapping, Sequence

from shared.config import DEFAULTS, SOURCES

# Flag kinds, in the order a reader should care about them.
STALE = "stale"
IMPLAUSIBLE = "implausible"
JUMP = "jump"
OUTLIER = "outlier"
FLAG_KINDS = (IMPLAUSIBLE, OUTLIER, JUMP, STALE)

_ZERO = Decimal(0)

Flag = dict[str, Any]


@dataclass(frozen=True)
class QualityThresholds:
    """The limits the checks apply; `from_settings` reads them from Settings.

    The defaults are the settings' own (shared.config.DEFAULTS).
    """

    # Seconds between observation and fetch after which a source's quote is stale; 0 = off.
    stale_seconds: Mapping[str, int] = field(default_factory=lambda: {
        source: DEFAULTS[f"QUALITY_STALE_SECONDS_{source.upper()}"] for source in SOURCES})
    jump_factor: float = DEFAULTS["QUALITY_JUMP_FACTOR"]
    outlier_pct: float = DEFAULTS["QUALITY_OUTLIER_PCT"]
    outlier_window_seconds: int = DEFAULTS["CONSENSUS_WINDOW_SECONDS"]
    mcap_volume_ratio: float = DEFAULTS["QUALITY_MCAP_VOLUME_RATIO"]
    mcap_supply_factor: float = DEFAULTS["QUALITY_MCAP_SUPPLY_FACTOR"]
    max_market_cap_usd: float = DEFAULTS["QUALITY_MAX_MARKET_CAP_USD"]

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
    # Decimals as strings keep every digit; datetimes as ISO 8601; the rest as is.
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
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


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def implausible_flags(price: float | None, mcap: float | None, volume: float | None,
                      supply: float | None, thresholds: QualityThresholds) -> list[Flag]:
    """*implausible*: negative values, an absurd market cap, or one out of proportion."""
    flags: list[Flag] = []
    for name, value in (("price_usd", price), ("market_cap_usd", mcap),
                        ("volume_24h_usd", volume), ("circulating_supply", supply)):
        if value is not None and value < 0:
            flags.append(make_flag(IMPLAUSIBLE, f"{name} is negative", field=name, value=value,
                                   rule=f"{name} >= 0"))
    if mcap is None or mcap <= 0:
        return flags
    if mcap > thresholds.max_market_cap_usd:
        flags.append(make_flag(
            IMPLAUSIBLE, "market cap larger than any real asset's", field="market_cap_usd",
            value=mcap, threshold=thresholds.max_market_cap_usd,
            rule="market_cap_usd <= max_market_cap_usd"))
    # Zero volume means "unknown" in several sources (old CSV rows): no verdict on it.
    if volume is not None and volume > 0:
        ratio = mcap / volume
        if ratio > thresholds.mcap_volume_ratio:
            flags.append(make_flag(
                IMPLAUSIBLE, f"market cap is {ratio:.3g} times the 24h volume",
                field="market_cap_usd", market_cap_usd=mcap, volume_24h_usd=volume,
                ratio=ratio, threshold=thresholds.mcap_volume_ratio,
                rule="market_cap_usd / volume_24h_usd <= threshold"))
    if price is not None and supply is not None and price > 0 and supply > 0:
        ratio = mcap / (price * supply)
        factor = thresholds.mcap_supply_factor
        if ratio > factor or ratio * factor < 1:
            flags.append(make_flag(
                IMPLAUSIBLE, f"market cap is {ratio:.3g} times price x circulating supply",
                field="market_cap_usd", market_cap_usd=mcap, price_usd=price,
                circulating_supply=supply, ratio=ratio, threshold=factor,
                rule="1/threshold <= market_cap_usd / (price_usd * circulating_supply) "
                     "<= threshold"))
    return flags


def jump_flag(price: float, observed_at: Any, prev_at: Any, prev_price: float,
              thresholds: QualityThresholds) -> Flag:
    """*jump*: `price` at `observed_at` against the previous quote's (`prev_at`, `prev_price`)."""
    factor = max(price / prev_price, prev_price / price)
    return make_flag(JUMP, f"price moved {factor:.3g}x since the previous quote",
                     price_usd=price, previous_price_usd=prev_price,
                     observed_at=observed_at, previous_observed_at=prev_at, factor=factor,
                     threshold=thresholds.jump_factor,
                     rule="max(price/previous, previous/price) < threshold")


def check_columns(
    source: str,
    keys: Sequence[Any],
    times: Sequence[Any],
    prices: Sequence[float | None],
    thresholds: QualityThresholds,
    *,
    mcaps: Sequence[float | None] | None = None,
    volumes: Sequence[float | None] | None = None,
    supplies: Sequence[float | None] | None = None,
    fetched_at: datetime | None = None,
    previous: Mapping[Any, tuple[Any, float]] | None = None,
) -> dict[int, list[Flag]]:
    """Flags of one source's batch given as columns: {row index: flags}, flagged rows only.

    Row i is (keys[i], times[i], prices[i], ...); numbers as floats (a CSV reader passes
    float(text)), times as datetimes or ISO 8601 text of one format (they are only compared,
    except by the stale check, which needs datetimes and `fetched_at`). `previous` maps a key
    to the (time, price) of its newest quote stored before this batch (one query per batch,
    by the caller); rows of one key inside the batch are compared in time order too, so a
    CSV file's overnight 100x is caught. Clean rows cost a few float comparisons: the flag
    dicts are built only for flagged rows.
    """
    result: dict[int, list[Flag]] = {}
    if mcaps is not None and not _columns_clean(prices, mcaps, volumes, supplies, thresholds):
        n = len(prices)
        vols = volumes if volumes is not None else [None] * n
        sups = supplies if supplies is not None else [None] * n
        limit = thresholds.max_market_cap_usd
        ratio = thresholds.mcap_volume_ratio
        factor = thresholds.mcap_supply_factor
        for i, (p, m, v, s) in enumerate(zip(prices, mcaps, vols, sups)):
            # A cheap screen in floats; only a suspect row gets the full check and its flags.
            suspect = ((p is not None and p < 0) or (v is not None and v < 0)
                       or (s is not None and s < 0))
            if not suspect and m is not None:
                if m < 0 or m > limit or (v is not None and v > 0 and m > ratio * v):
                    suspect = True
                elif m > 0 and p and s and p > 0 and s > 0:
                    share = m / (p * s)
                    suspect = share > factor or share * factor < 1
            if suspect:
                flags = implausible_flags(p, m, v, s, thresholds)
                if flags:
                    result[i] = flags
    elif mcaps is None and not _all_at_least(prices, 0.0):
        for i, p in enumerate(prices):
            if p is not None and p < 0:
                result[i] = implausible_flags(p, None, None, None, thresholds)
    if fetched_at is not None and thresholds.stale_seconds.get(source, 0):
        oldest = fetched_at - timedelta(seconds=thresholds.stale_seconds[source])
        for i, observed in enumerate(times):
            if observed < oldest:
                stale = stale_flag(source, observed, fetched_at, thresholds)
                if stale:
                    result.setdefault(i, []).append(stale)
    _jumps(keys, times, prices, thresholds, previous, result)
    return result


def _all_at_least(values: Sequence[float | None], floor: float) -> bool:
    # min() runs in C; a None (unknown value) makes the caller take the row-by-row path.
    column: Any = values
    try:
        return not column or bool(min(column) >= floor)
    except TypeError:
        return False


def _columns_clean(prices: Sequence[float | None], mcaps: Sequence[float | None],
                   volumes: Sequence[float | None] | None,
                   supplies: Sequence[float | None] | None, t: QualityThresholds) -> bool:
    """True when no row can be implausible, proven with C-level min/max over the columns.

    Any None or zero (unknown values, which the row-by-row screen handles) answers False.
    """
    p: Any = prices
    m: Any = mcaps
    v: Any = volumes
    s: Any = supplies
    if not m:
        return True
    try:
        if min(p) <= 0 or min(m) <= 0 or max(m) > t.max_market_cap_usd:
            return False
        if v is not None and (min(v) <= 0 or max(map(truediv, m, v)) > t.mcap_volume_ratio):
            return False
        if s is not None:
            shares = list(map(truediv, m, map(mul, p, s)))
            if max(shares) > t.mcap_supply_factor or min(shares) * t.mcap_supply_factor < 1:
                return False
    except (TypeError, ZeroDivisionError):
        return False
    return True


def _one_key_clean(keys: Sequence[Any], times: Sequence[Any], prices: Sequence[float | None],
                   factor: float) -> bool:
    """True when all rows are one key in time order and no step moves by `factor` (C-level)."""
    column: Any = prices
    try:
        if keys.count(keys[0]) != len(keys) or not all(map(le, times, islice(times, 1, None))):
            return False
        moves = list(map(truediv, islice(column, 1, None), column))
        return not moves or bool(max(moves) < factor and min(moves) * factor > 1)
    except (TypeError, ZeroDivisionError, AttributeError):
        return False


def _jumps(keys: Sequence[Any], times: Sequence[Any], prices: Sequence[float | None],
           t: QualityThresholds, previous: Mapping[Any, tuple[Any, float]] | None,
           result: dict[int, list[Flag]]) -> None:
    factor = t.jump_factor
    last: dict[Any, tuple[Any, float]] = dict(previous or {})
    order: Iterable[int] = range(len(prices))
    if prices and not result and _one_key_clean(keys, times, prices, factor):
        # The common CSV case (one coin's block, in time order, no wild step): only the
        # first row needs comparing, with the stored previous quote.
        order = range(1)
    elif not all(map(le, times, islice(times, 1, None))):
        # Not in time order (several keys interleaved, or newest first): sort once.
        order = sorted(order, key=times.__getitem__)
    for i in order:
        p = prices[i]
        if p is None or p <= 0 or (i in result and _implausible(result[i])):
            # An implausible price must not become the base the next one is judged by.
            continue
        k = keys[i]
        prev = last.get(k)
        at = times[i]
        if prev is not None and prev[0] < at and prev[1] > 0:
            move = p / prev[1]
            if move >= factor or move * factor <= 1:
                result.setdefault(i, []).append(jump_flag(p, at, prev[0], prev[1], t))
        last[k] = (at, p)


def _implausible(flags: Sequence[Flag]) -> bool:
    return any(f["flag"] == IMPLAUSIBLE for f in flags)


def check_batch(
    source: str,
    quotes: Sequence[Any],
    fetched_at: datetime | None,
    thresholds: QualityThresholds,
    previous: Mapping[Any, tuple[Any, Any]] | None = None,
    key: Callable[[Any], Any] = lambda q: q.source_asset_id,
) -> dict[int, list[Flag]]:
    """check_columns over quote objects (records.ParsedQuote, models.Quote, CurrentQuote).

    The objects need observed_at, price_usd, market_cap_usd, volume_24h_usd and
    circulating_supply; `previous` maps key(quote) to (observed_at, price_usd).
    """
    prev = {k: (at, float(p)) for k, (at, p) in (previous or {}).items() if p is not None}
    return check_columns(
        source, [key(q) for q in quotes], [q.observed_at for q in quotes],
        [_num(q.price_usd) for q in quotes], thresholds,
        mcaps=[_num(getattr(q, "market_cap_usd", None)) for q in quotes],
        volumes=[_num(getattr(q, "volume_24h_usd", None)) for q in quotes],
        supplies=[_num(getattr(q, "circulating_supply", None)) for q in quotes],
        fetched_at=fetched_at, previous=prev)


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
