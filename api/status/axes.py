"""Axis maths for the SVG charts (pure functions): linear or log scale, its choice, its ticks."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

LINEAR, LOG = "linear", "log"
SCALES = (LINEAR, LOG)
# Past this max/min ratio a linear axis squeezes the low end into a flat line (13 years of
# Bitcoin: the first eight sit in the bottom 2% of the plot), so the default turns to log.
LOG_SPAN = 100.0
# Room above the highest and below the lowest value, as a share of the axis: the markers
# drawn on the extreme points stay inside the plot.
PAD = 0.04
MAX_TICKS = 8


def span_ratio(values: Sequence[float]) -> float | None:
    """max/min of `values`, or None when there is none or one is not above zero (no log)."""
    if not values or min(values) <= 0:
        return None
    return max(values) / min(values)


def choose_scale(values: Sequence[float], requested: str | None = None) -> str:
    """`requested` when it can be drawn (log needs every value above zero); by default log
    when the values span more than LOG_SPAN times, else linear."""
    if requested not in (None, *SCALES):
        raise ValueError(f"scale {requested!r}: one of {', '.join(SCALES)}")
    ratio = span_ratio(values)
    if requested == LINEAR or ratio is None:
        return LINEAR
    if requested == LOG:
        return LOG
    return LOG if ratio > LOG_SPAN else LINEAR


def _decimal(mantissa: int, exponent: int) -> float:
    # Parsed from text so that 3 x 0.1 is 0.3, not 0.30000000000000004.
    return float(f"{mantissa}e{exponent}")


def linear_ticks(lo: float, hi: float, max_ticks: int = MAX_TICKS - 1) -> list[float]:
    """Evenly spaced round values (a step of 1, 2 or 5 x 10^k) between lo and hi."""
    if hi <= lo:
        return [lo]
    exponent = math.floor(math.log10((hi - lo) / max_ticks))
    for mantissa in (1, 2, 5, 10):
        step = _decimal(mantissa, exponent)
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        if last - first + 1 <= max_ticks:
            break
    return [_decimal(i * mantissa, exponent) for i in range(first, last + 1)]


def log_ticks(lo: float, hi: float, max_ticks: int = MAX_TICKS) -> list[float]:
    """Round values for a log axis between lo > 0 and hi: 1-2-5 x 10^k when at most
    `max_ticks` of them fit, else powers of ten (every n-th past `max_ticks`); a span too
    narrow for three such values gets linear ticks (still placed on the log axis)."""
    if lo <= 0:
        raise ValueError("a log axis needs values above zero")
    low, high = math.floor(math.log10(lo)), math.ceil(math.log10(hi))

    def between(mantissas: tuple[int, ...], every: int = 1) -> list[float]:
        return [v for e in range(low, high + 1) if e % every == 0 for m in mantissas
                if lo <= (v := _decimal(m, e)) <= hi]

    ticks = between((1, 2, 5))
    if len(ticks) < 3:
        return linear_ticks(lo, hi)
    if len(ticks) <= max_ticks:
        return ticks
    every = 1
    while len(ticks := between((1,), every)) > max_ticks:
        every += 1
    return ticks


def tick_label(value: float) -> str:
    """A tick's text: thousands separated, small values without trailing zeros."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


@dataclass(frozen=True)
class Axis:
    """A value axis: its scale, its padded ends (in values) and its ticks."""

    scale: str
    lo: float
    hi: float
    ticks: tuple[float, ...]

    def fraction(self, value: float) -> float:
        """Where `value` sits along the axis: 0 at `lo`, 1 at `hi`."""
        if self.scale == LOG:
            return (math.log10(value) - math.log10(self.lo)) / (
                math.log10(self.hi) - math.log10(self.lo))
        return (value - self.lo) / (self.hi - self.lo)


def value_axis(values: Sequence[float], scale: str) -> Axis:
    """The axis for `values` (not empty) on `scale`, padded by PAD at both ends."""
    lo, hi = min(values), max(values)
    if scale == LOG:
        low, high = math.log10(lo), math.log10(hi)
        pad = (high - low) * PAD or 0.02  # a flat line still needs a span
        lo, hi = 10 ** (low - pad), 10 ** (high + pad)
        return Axis(LOG, lo, hi, tuple(log_ticks(lo, hi)))
    pad = (hi - lo) * PAD or abs(lo) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad
    return Axis(LINEAR, lo, hi, tuple(linear_ticks(lo, hi)))
