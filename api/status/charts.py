"""Server-side SVG charts (pure functions): line chart, sparkline, status grid; text escaped."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Sequence
from xml.sax.saxutils import escape, quoteattr

from api.status.axes import LOG, Axis, choose_scale, tick_label, value_axis

# Colour-blind-safe palette (Okabe-Ito); each reaches 3:1 against white for lines and marks.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
# Status colours: text on them is white (failed, partial) or black, at >= 4.5:1 contrast.
STATUS_COLOURS = {
    "succeeded": "#1a7f37", "fresh": "#1a7f37",
    "partial": "#9a6700", "stale": "#9a6700",
    "failed": "#cf222e", "failing": "#cf222e",
    "running": "#0969da", "queued": "#57606a", "skipped": "#8c959f",
}
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass(frozen=True)
class Series:
    """One line: its name and (x, y) points; `marked` points are drawn as hollow rings;
    `latest` gives its newest point a marker of its own, labelled with the value."""

    name: str
    points: Sequence[tuple[float, float]]
    marked: Sequence[tuple[float, float]] = field(default_factory=tuple)
    dashed: bool = False
    latest: bool = False


@dataclass(frozen=True)
class Cell:
    """One box of a status grid: a status, a hover title and an optional link."""

    status: str
    title: str
    href: str | None = None


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _svg_open(width: int, height: int, title: str, desc: str | None = None,
              attrs: str = "") -> list[str]:
    label = quoteattr(title)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label={label}{attrs}>',
             f"<title>{escape(title)}</title>"]
    if desc:
        parts.append(f"<desc>{escape(desc)}</desc>")
    return parts


def _bounds(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if lo == hi:  # a flat line still needs a non-zero span
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    return lo, hi


def _time_label(x: float) -> str:
    return datetime.fromtimestamp(x, timezone.utc).strftime("%m-%d %H:%M")


def _date_label(x: float) -> str:
    return datetime.fromtimestamp(x, timezone.utc).strftime("%Y-%m-%d")


def _stamp_label(x: float) -> str:
    return datetime.fromtimestamp(x, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _value_label(y: float) -> str:
    if abs(y) >= 1000:
        return f"{y:,.0f}"
    return f"{y:.4g}"


# The line chart's margins (px): the right one holds the legend and the latest values.
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 170, 28, 40
_PITCH = 14  # px between two lines of text in the right margin
# Marker shapes of the latest points, one per series, by the size `s` that draws them (circle:
# radius; square: half side; diamond, triangles, plus: centre to tip) as (s alone, the
# distance from the centre to the nearest edge per unit of s, to the farthest point).
SHAPES = {"circle": (5.0, 1.0, 1.0), "square": (4.5, 1.0, 2 ** 0.5),
          "diamond": (6.0, 2 ** -0.5, 1.0), "triangle": (6.5, 0.5, 1.0),
          "triangle-down": (6.5, 0.5, 1.0), "plus": (6.0, 0.5, 1.0)}


@dataclass(frozen=True)
class _Plot:
    """Where the plot sits in the SVG and how a data point maps onto it."""

    left: float
    top: float
    width: float
    height: float
    x0: float
    x1: float
    y: Axis

    def px(self, x: float) -> float:
        """The x pixel of a time (or x value)."""
        return self.left + (x - self.x0) / (self.x1 - self.x0) * self.width

    def py(self, y: float) -> float:
        """The y pixel of a value, on the axis' scale."""
        return self.top + self.height * (1 - self.y.fraction(y))


def _price_label(y: float) -> str:
    return f"{y:,.2f}" if abs(y) >= 1 else f"{y:.4g}"


def _shape(kind: str, cx: float, cy: float, s: float, attrs: str, inner: str = "") -> str:
    """A marker element of size `s` (see SHAPES) centred on (cx, cy); absolute coordinates."""
    if kind == "circle":
        return (f'<circle cx="{_num(cx)}" cy="{_num(cy)}" r="{_num(s)}" {attrs}>{inner}'
                f'</circle>')
    if kind == "square":
        corners = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif kind == "diamond":
        corners = [(0, -s), (s, 0), (0, s), (-s, 0)]
    elif kind == "plus":
        corners = [(-s, 0), (s, 0), (0, 0), (0, -s), (0, s)]
    else:
        flip = 1 if kind == "triangle" else -1
        corners = [(0, -s * flip), (s * 0.87, s / 2 * flip), (-s * 0.87, s / 2 * flip)]
    d = "L".join(f"{_num(cx + dx)} {_num(cy + dy)}" for dx, dy in corners)
    return f'<path d="M{d}{"" if kind == "plus" else "Z"}" {attrs}>{inner}</path>'


def _sizes(centres: Sequence[tuple[float, float]], kinds: Sequence[str]) -> list[float]:
    """Each marker's size: its own, or, when its centre falls within an earlier marker, large
    enough to go round it (two sources at one price: a square round a circle, not one blot)."""
    sizes: list[float] = []
    for (x, y), kind in zip(centres, kinds):
        size, inner, _ = SHAPES[kind]
        for (x0, y0), kind0, size0 in zip(centres, kinds, sizes):
            apart, reach = math.hypot(x - x0, y - y0), size0 * SHAPES[kind0][2]
            if apart <= reach:  # 3 px clear of the one inside
                size = max(size, (apart + reach + 3) / inner)
        sizes.append(size)
    return sizes


def _spread(wanted: Sequence[float], lo: float, hi: float, pitch: float) -> list[float]:
    """Label positions as near `wanted` (ascending) as they can be, `pitch` apart in lo..hi."""
    placed: list[float] = []
    for y in wanted:
        placed.append(max(y, lo if not placed else placed[-1] + pitch))
    for k in range(len(placed) - 1, -1, -1):  # pushed past the end: move them back up
        placed[k] = min(placed[k], hi if k == len(placed) - 1 else placed[k + 1] - pitch)
    return placed


def _frame(plot: _Plot, fmt: Callable[[float], str], x_label: str, y_label: str,
           height: int) -> list[str]:
    """The axes, the plot area, the y ticks with their grid lines, and the labels."""
    left, top, right, bottom = plot.left, plot.top, plot.left + plot.width, plot.top + plot.height
    parts = [f'<rect class="plot" x="{left}" y="{top}" width="{plot.width}" '
             f'height="{plot.height}" fill="none"/>',
             f'<g class="ticks" data-scale="{plot.y.scale}" {_FONT} fill="#24292f">']
    for tick in plot.y.ticks:
        y = _num(plot.py(tick))
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y}" y2="{y}" stroke="#d1d9e0"/>'
                     f'<text class="tick" x="{left - 4}" y="{_num(plot.py(tick) + 4)}" '
                     f'text-anchor="end">{escape(tick_label(tick))}</text>')
    parts.append("</g>")
    parts.append(f'<g class="axes" stroke="#57606a" fill="none"><path d="M{left} {top}V'
                 f'{bottom}H{right}"/></g>')
    parts.append(f'<g class="labels" {_FONT} fill="#24292f">'
                 f'<text x="{left}" y="{bottom + 14}">{escape(fmt(plot.x0))}</text>'
                 f'<text x="{right}" y="{bottom + 14}" text-anchor="end">'
                 f'{escape(fmt(plot.x1))}</text>'
                 f'<text x="{left + plot.width / 2:.0f}" y="{height - 6}" '
                 f'text-anchor="middle">{escape(x_label)}</text>'
                 f'<text transform="translate(12 {top + plot.height / 2:.0f}) rotate(-90)" '
                 f'text-anchor="middle">{escape(y_label)}</text></g>')
    return parts


def _latest(plot: _Plot, series: Sequence[Series], stamp: Callable[[float], str],
            band: tuple[float, float]) -> list[str]:
    """Each `latest` series' newest point: a marker of its own shape and size, drawn over
    every line (two sources at one price show as nested outlines), and its name and value in
    the right margin, joined by a leader line, the labels `_PITCH` apart within `band`."""
    newest = [(i, s, max(s.points)) for i, s in enumerate(series) if s.latest and s.points]
    kinds = [list(SHAPES)[n % len(SHAPES)] for n in range(len(newest))]
    centres = [(plot.px(x), plot.py(y)) for _, _, (x, y) in newest]
    sizes = _sizes(centres, kinds)
    order = sorted(range(len(newest)), key=lambda n: centres[n][1])
    label_ys = _spread([centres[n][1] for n in order], *band, _PITCH)
    label_x = plot.left + plot.width + 14
    parts = ['<g class="latest-points">']
    for n, ly in zip(order, label_ys):
        (i, s, (x, y)), (cx, cy), kind = newest[n], centres[n], kinds[n]
        colour, name, value = PALETTE[i % len(PALETTE)], escape(s.name), _price_label(y)
        reach = sizes[n] * SHAPES[kind][2]
        parts.append(
            f'<g class="latest" data-series={quoteattr(s.name)} data-shape="{kind}" '
            f'stroke="{colour}" fill="none"><path class="leader" stroke-dasharray="2 2" '
            f'd="M{_num(min(cx + reach + 1, label_x))} {_num(cy)}L{label_x} {_num(ly)}"/>'
            + _shape(kind, cx, cy, sizes[n], 'class="latest-mark" stroke-width="2"',
                     f"<title>{name} latest: {value} at {escape(stamp(x))}</title>")
            + _shape(kind, label_x + 6, ly, SHAPES[kind][0] * 0.8, 'stroke-width="1.5"') +
            f'<text class="latest-label" x="{label_x + 14}" y="{_num(ly + 4)}" stroke="none" '
            f'fill="#24292f" {_FONT}>{name} {value}</text></g>')
    parts.append("</g>")
    return parts


def line_chart(series: Sequence[Series], title: str, *, width: int = 640, height: int = 260,
               x_label: str = "time (UTC)", y_label: str = "price (USD)",
               x_is_time: bool = True, scale: str | None = None) -> str:
    """An SVG line chart: several series, marked points, latest points labelled, a legend,
    a y axis of round ticks on a linear or log `scale` (None: `choose_scale`'s default)."""
    xs = [x for s in series for x, _ in list(s.points) + list(s.marked)]
    ys = [y for s in series for _, y in list(s.points) + list(s.marked)]
    desc = f"{len(series)} series, {sum(len(s.points) for s in series)} points"
    if not xs:
        parts = _svg_open(width, height, title, desc)
        parts.append(f'<text x="{_LEFT}" y="16" {_FONT} font-weight="bold">{escape(title)}'
                     f'</text><text x="{_LEFT}" y="{(height + _TOP - _BOTTOM) // 2}" {_FONT}>'
                     f'no data</text></svg>')
        return "".join(parts)
    x0, x1 = _bounds(xs)
    axis = value_axis(ys, choose_scale(ys, scale))
    plot = _Plot(_LEFT, _TOP, width - _LEFT - _RIGHT, height - _TOP - _BOTTOM, x0, x1, axis)
    parts = _svg_open(width, height, title, desc, f' data-scale="{axis.scale}"')
    parts.append(f'<text x="{_LEFT}" y="16" {_FONT} font-weight="bold">{escape(title)}</text>')
    # Past a few weeks the hour says nothing and the year is what a reader needs.
    fmt = (_date_label if x1 - x0 > 30 * 86400 else _time_label) if x_is_time else _value_label
    parts += _frame(plot, fmt, x_label, f"{y_label}, log scale" if axis.scale == LOG
                    else y_label, height)
    legend_x = plot.left + plot.width + 12
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        name = escape(s.name)
        parts.append(f'<g class="series" data-series={quoteattr(s.name)}>')
        if s.points:
            coords = " ".join(f"{_num(plot.px(x))},{_num(plot.py(y))}" for x, y in s.points)
            dash = ' stroke-dasharray="5 3"' if s.dashed else ""
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} '
                         f'points="{coords}"><title>{name}</title></polyline>')
            # A line of one point draws nothing: a dot, unless its latest marker shows it.
            if len(s.points) == 1 and not s.latest:
                x, y = s.points[0]
                parts.append(f'<circle class="point" cx="{_num(plot.px(x))}" '
                             f'cy="{_num(plot.py(y))}" r="3.5" fill="{colour}"><title>{name}: '
                             f'{escape(_value_label(y))} at {escape(fmt(x))}</title></circle>')
        for x, y in s.marked:
            parts.append(f'<circle class="marked" cx="{_num(plot.px(x))}" '
                         f'cy="{_num(plot.py(y))}" r="5" fill="white" stroke="{colour}" '
                         f'stroke-width="2"><title>{name}: {escape(_value_label(y))} at '
                         f'{escape(fmt(x))} (flagged)</title></circle>')
        legend_y = _TOP + _PITCH * i + 6
        parts.append(f'<rect x="{legend_x}" y="{legend_y - 8}" width="10" height="10" '
                     f'fill="{colour}"/><text x="{legend_x + 14}" y="{legend_y + 1}" '
                     f'{_FONT}>{name}</text></g>')
    stamp = _stamp_label if x_is_time else _value_label
    parts += _latest(plot, series, stamp, (_TOP + _PITCH * len(series) + 10, height - 6))
    parts.append("</svg>")
    return "".join(parts)


def sparkline(values: Sequence[float], title: str, *, width: int = 120, height: int = 28,
              colour: str = PALETTE[0]) -> str:
    """A small SVG trend line of `values` (oldest first) with its last value dotted."""
    parts = _svg_open(width, height, title)
    if not values:
        parts.append("</svg>")
        return "".join(parts)
    lo, hi = _bounds(values)
    step = (width - 4) / max(len(values) - 1, 1)
    pts = [(2 + i * step, height - 2 - (v - lo) / (hi - lo) * (height - 4))
           for i, v in enumerate(values)]
    coords = " ".join(f"{_num(x)},{_num(y)}" for x, y in pts)
    parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>')
    last_x, last_y = pts[-1]
    parts.append(f'<circle cx="{_num(last_x)}" cy="{_num(last_y)}" r="2" fill="{colour}"/>')
    parts.append("</svg>")
    return "".join(parts)


def status_grid(rows: Sequence[tuple[str, Sequence[Cell]]], title: str, *, cell: int = 14,
                gap: int = 2, label_width: int = 100, align_end: bool = False) -> str:
    """A grid (one row per name, oldest cell first) of status-coloured boxes, linked if asked.

    `label_width=0` leaves the names out (the page prints them beside a scrolling grid);
    `align_end` ends every row at the right edge, so each row's newest boxes line up.
    """
    columns = max((len(cells) for _, cells in rows), default=0)
    width = label_width + columns * (cell + gap) + gap
    height = len(rows) * (cell + gap) + gap + 4
    parts = _svg_open(width, height, title)
    for r, (name, cells) in enumerate(rows):
        y = gap + r * (cell + gap)
        if label_width:
            parts.append(f'<text x="0" y="{y + cell - 3}" {_FONT}>{escape(name)}</text>')
        shift = columns - len(cells) if align_end else 0
        for c, box in enumerate(cells):
            x = label_width + gap + (shift + c) * (cell + gap)
            colour = STATUS_COLOURS.get(box.status, "#8c959f")
            rect = (f'<rect class="cell" data-status={quoteattr(box.status)} x="{x}" y="{y}" '
                    f'width="{cell}" height="{cell}" rx="2" fill="{colour}">'
                    f'<title>{escape(box.title)}</title></rect>')
            if box.href:
                rect = f'<a href={quoteattr(box.href)} aria-label={quoteattr(box.title)}>{rect}</a>'
            parts.append(rect)
    parts.append("</svg>")
    return "".join(parts)
