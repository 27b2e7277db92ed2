"""Server-side SVG charts (pure functions): line chart, sparkline, status grid; text escaped."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Sequence
from xml.sax.saxutils import escape, quoteattr

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
    """One line: its name and (x, y) points; `marked` points are drawn as hollow rings."""

    name: str
    points: Sequence[tuple[float, float]]
    marked: Sequence[tuple[float, float]] = field(default_factory=tuple)
    dashed: bool = False


@dataclass(frozen=True)
class Cell:
    """One box of a status grid: a status, a hover title and an optional link."""

    status: str
    title: str
    href: str | None = None


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _svg_open(width: int, height: int, title: str, desc: str | None = None) -> list[str]:
    label = quoteattr(title)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label={label}>',
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


def _value_label(y: float) -> str:
    if abs(y) >= 1000:
        return f"{y:,.0f}"
    return f"{y:.4g}"


def line_chart(series: Sequence[Series], title: str, *, width: int = 640, height: int = 260,
               x_label: str = "time (UTC)", y_label: str = "price (USD)",
               x_is_time: bool = True) -> str:
    """An SVG line chart: several series, marked points, axes with min/max labels, a legend.

    One function (64 lines) because the scales it computes are used by every part it draws.
    """
    left, right, top, bottom = 70, 150, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for s in series for x, _ in list(s.points) + list(s.marked)]
    ys = [y for s in series for _, y in list(s.points) + list(s.marked)]
    desc = f"{len(series)} series, {sum(len(s.points) for s in series)} points"
    parts = _svg_open(width, height, title, desc)
    parts.append(f'<text x="{left}" y="16" {_FONT} font-weight="bold">{escape(title)}</text>')
    if not xs:
        parts.append(f'<text x="{left}" y="{top + plot_h // 2}" {_FONT}>no data</text></svg>')
        return "".join(parts)
    x0, x1 = _bounds(xs)
    y0, y1 = _bounds(ys)

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    # Axes and their labels.
    parts.append(f'<g class="axes" stroke="#57606a" fill="none"><path d="M{left} {top}V'
                 f'{top + plot_h}H{left + plot_w}"/></g>')
    # Past a few weeks the hour says nothing and the year is what a reader needs.
    fmt = (_date_label if x1 - x0 > 30 * 86400 else _time_label) if x_is_time else _value_label
    parts.append(f'<g class="labels" {_FONT} fill="#24292f">'
                 f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{escape(_value_label(y1))}'
                 f'</text><text x="{left - 4}" y="{top + plot_h}" text-anchor="end">'
                 f'{escape(_value_label(y0))}</text>'
                 f'<text x="{left}" y="{top + plot_h + 14}">{escape(fmt(x0))}</text>'
                 f'<text x="{left + plot_w}" y="{top + plot_h + 14}" text-anchor="end">'
                 f'{escape(fmt(x1))}</text>'
                 f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">'
                 f'{escape(x_label)}</text>'
                 f'<text transform="translate(12 {top + plot_h / 2:.0f}) rotate(-90)" '
                 f'text-anchor="middle">{escape(y_label)}</text></g>')
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        name = escape(s.name)
        parts.append(f'<g class="series" data-series={quoteattr(s.name)}>')
        if s.points:
            coords = " ".join(f"{_num(px(x))},{_num(py(y))}" for x, y in s.points)
            dash = ' stroke-dasharray="5 3"' if s.dashed else ""
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} '
                         f'points="{coords}"><title>{name}</title></polyline>')
            if len(s.points) == 1:  # a line of one point draws nothing: show it as a dot
                x, y = s.points[0]
                parts.append(f'<circle class="point" cx="{_num(px(x))}" cy="{_num(py(y))}" '
                             f'r="3.5" fill="{colour}"><title>{name}: {escape(_value_label(y))}'
                             f' at {escape(fmt(x))}</title></circle>')
        for x, y in s.marked:
            parts.append(f'<circle class="marked" cx="{_num(px(x))}" cy="{_num(py(y))}" r="5" '
                         f'fill="white" stroke="{colour}" stroke-width="2"><title>{name}: '
                         f'{escape(_value_label(y))} at {escape(fmt(x))} (flagged)</title>'
                         f'</circle>')
        legend_y = top + 14 * i + 6
        parts.append(f'<rect x="{left + plot_w + 12}" y="{legend_y - 8}" width="10" height="10" '
                     f'fill="{colour}"/><text x="{left + plot_w + 26}" y="{legend_y + 1}" '
                     f'{_FONT}>{name}</text></g>')
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
