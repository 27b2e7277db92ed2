"""Cross-source price consensus over clean quotes observed within one time window."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Mapping, Sequence

# Why a source's quote did not take part.
OUT_OF_WINDOW = "out_of_window"
FLAGGED = "flagged"
NO_PRICE = "no_price"


@dataclass(frozen=True)
class Excluded:
    """A source left out of the consensus, and why."""

    source: str
    reason: str
    observed_at: datetime | None
    detail: str


@dataclass(frozen=True)
class WindowConsensus:
    """Median price over in-window clean quotes, who took part, who did not and why."""

    price_usd: Decimal | None
    min_price_usd: Decimal | None
    max_price_usd: Decimal | None
    spread: float | None
    disagree: bool
    threshold: float
    window_seconds: int
    window_start: datetime | None
    window_end: datetime | None
    sources: list[str] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)
    single_source: bool = False
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields of today's consensus (shared.queries) plus window and why."""
        def text(value: Decimal | None) -> str | None:
            return None if value is None else str(value)

        def stamp(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "price_usd": text(self.price_usd), "min_price_usd": text(self.min_price_usd),
            "max_price_usd": text(self.max_price_usd), "spread": self.spread,
            "disagree": self.disagree, "threshold": self.threshold, "sources": self.sources,
            "window": {"seconds": self.window_seconds, "start": stamp(self.window_start),
                       "end": stamp(self.window_end)},
            "excluded": [{"source": e.source, "reason": e.reason,
                          "observed_at": stamp(e.observed_at), "detail": e.detail}
                         for e in self.excluded],
            "single_source": self.single_source, "note": self.note,
        }


def _flag_kinds(quote: Any, flags: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    # Flags come from the caller's map, else from the quote's stored `quality` value.
    found = flags.get(quote.source)
    if found is None:
        quality = getattr(quote, "quality", None) or {}
        found = quality.get("flags", [])
    return sorted({f["flag"] for f in found})


def window_consensus(
    quotes: Sequence[Any],
    window_seconds: int,
    threshold: float,
    flags: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> WindowConsensus:
    """Consensus of one asset's current quotes (one per source).

    `quotes` have source, observed_at, price_usd and optionally quality (current_quotes).
    Flagged quotes never take part. The window ends at the freshest clean priced quote and
    spans `window_seconds` back from it; older quotes are left out as out_of_window (a
    year-old price is not a disagreement). `disagree` is true only when at least two
    in-window clean prices spread more than `threshold` (a share of the median).
    """
    flags = flags or {}
    excluded: list[Excluded] = []
    clean: list[Any] = []
    for quote in sorted(quotes, key=lambda q: q.source):
        if quote.price_usd is None:
            excluded.append(Excluded(quote.source, NO_PRICE, quote.observed_at, "no price"))
            continue
        kinds = _flag_kinds(quote, flags)
        if kinds:
            excluded.append(Excluded(quote.source, FLAGGED, quote.observed_at,
                                     "flagged: " + ", ".join(kinds)))
            continue
        clean.append(quote)
    if not clean:
        return WindowConsensus(None, None, None, None, False, threshold, window_seconds,
                               None, None, [], excluded, False,
                               "no clean priced quote")
    end = max(q.observed_at for q in clean)
    start = end - timedelta(seconds=window_seconds)
    inside: list[Any] = []
    for quote in clean:
        if quote.observed_at >= start:
            inside.append(quote)
        else:
            age = (end - quote.observed_at).total_seconds()
            excluded.append(Excluded(
                quote.source, OUT_OF_WINDOW, quote.observed_at,
                f"observed {age:.0f} s before the freshest quote (window {window_seconds} s)"))
    prices = [Decimal(q.price_usd) for q in inside]
    median = statistics.median(prices)
    low, high = min(prices), max(prices)
    spread = float((high - low) / median) if median > 0 else None
    single = len(inside) == 1
    disagree = not single and spread is not None and spread > threshold
    if single:
        note = f"only {inside[0].source} has a clean quote in the window"
    elif disagree:
        note = f"in-window clean quotes spread {spread:.3g} > {threshold}"
    else:
        note = f"{len(inside)} sources agree within {threshold}"
    excluded.sort(key=lambda e: e.source)
    return WindowConsensus(median, low, high, spread, disagree, threshold, window_seconds,
                           start, end, sorted(q.source for q in inside), excluded, single,
                           note)
