"""The /status pages' contents: shared queries and broker probes turned into template context."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable, Mapping
from urllib.parse import urlencode

from markupsafe import Markup
from sqlalchemy.orm import Session

from api.status.axes import LOG_SPAN, SCALES, choose_scale, span_ratio
from api.status.charts import STATUS_COLOURS, Cell, Series, line_chart, sparkline, status_grid
from shared.config import Settings
from shared.queries.freshness import FAILING, FRESH, STALE, source_states
from shared.queries.notifications import notification_counts, recent_notifications
from shared.queries.backfills import recent_backfills
from shared.queries.price_chart import PriceChart
from shared.storage.usage import storage_figures
from shared.queries.status import (
    anomaly_assets, quality_counts, run_trends, runs_since, top_assets,
)

REFRESH_SECONDS = 30
RECENT_NOTIFICATIONS = 10
# The run grid's box and gap (px); the template's row labels use the same pitch.
GRID_CELL, GRID_GAP = 12, 2


def ago(at: datetime | None, now: datetime) -> str:
    """'3 min ago', 'in 2 min', or an em dash for never (for people, not machines)."""
    if at is None:
        return "never"
    seconds = (now - at).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 90:
        text = f"{seconds:.0f} s"
    elif seconds < 90 * 60:
        text = f"{seconds / 60:.0f} min"
    elif seconds < 36 * 3600:
        text = f"{seconds / 3600:.1f} h"
    else:
        text = f"{seconds / 86400:.1f} d"
    return f"in {text}" if future else f"{text} ago"


def stamp(at: datetime | None) -> str:
    """An ISO-8601 UTC time to the second (a title attribute), or empty."""
    return at.strftime("%Y-%m-%d %H:%M:%S UTC") if at is not None else ""


def _run_title(cell: Any) -> str:
    seconds = f", {cell.seconds:.1f} s" if cell.seconds is not None else ""
    error = f": {cell.error}" if cell.error else ""
    return (f"run {cell.id} ({cell.source}) {cell.status} at {stamp(cell.created_at)}"
            f"{seconds}, {cell.inserted} rows inserted{error}")


def _sources(session: Session, settings: Settings, now: datetime) -> list[dict[str, Any]]:
    """Per enabled source: its state and trend sparklines."""
    states = source_states(session, settings, now)
    trends = run_trends(session, list(states))
    rows = []
    for name, state in states.items():
        trend = trends[name]
        runs = len(trend.run_ids)
        rows.append({
            **state.as_dict(),
            "last_success_ago": ago(state.last_success_at, now),
            "last_success_stamp": stamp(state.last_success_at),
            "last_error_ago": ago(state.last_error_at, now),
            "next_run_in": ago(state.next_run_at, now) if state.next_run_at
            else "no beat tick yet",
            "next_run_stamp": stamp(state.next_run_at),
            "duration_chart": Markup(sparkline(
                trend.seconds, f"{name}: duration of the last {runs} runs in seconds, "
                f"newest {trend.seconds[-1]:.1f} s")) if runs else None,
            "inserted_chart": Markup(sparkline(
                [float(n) for n in trend.inserted],
                f"{name}: rows inserted by the last {runs} runs, newest {trend.inserted[-1]}",
                colour="#D55E00")) if runs else None,
        })
    return rows


STORAGE_TABLES = 8


def size_text(n: float | None) -> str:
    """Bytes for people: '512 B', '3.2 MiB', '1.4 GiB' (an em dash for unknown)."""
    if n is None:
        return "\u2014"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # not reached: TiB ends the loop


def _storage(figures: Mapping[str, Any]) -> dict[str, Any]:
    """The storage panel: the figures of shared.storage.usage, written for people."""
    left = figures["days_left"]
    return {
        "used": size_text(figures["database_bytes"]), "budget": size_text(figures["budget_bytes"]),
        "growth": size_text(figures["growth_bytes_per_day"]),
        "span": figures["growth_span_hours"],
        "days_left": "\u2014" if left is None else f"{left:,.1f}",
        "low": left is not None and left < figures["alert_days"],
        "alert_days": figures["alert_days"],
        "per_quote": "\u2014" if figures["bytes_per_quote"] is None
        else f"{figures['bytes_per_quote']:,.0f}",
        "tables": [{"table": t["table"], "size": size_text(t["bytes"]),
                    "partitions": len(t["partitions"]),
                    "largest": (f"{t['partitions'][0]['partition']}, "
                                f"{size_text(t['partitions'][0]['bytes'])}")
                    if t["partitions"] else "\u2014"}
                   for t in figures["tables"][:STORAGE_TABLES]],
    }


def status_context(session: Session, settings: Settings, now: datetime,
                   broker: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
    """Everything /status shows, `broker()` giving workers online and queue depths."""
    day_ago = now - timedelta(hours=24)
    sources = _sources(session, settings, now)
    timeline = runs_since(session, day_ago)
    names = [s["source"] for s in sources] + sorted(set(timeline) - {s["source"] for s in sources})
    grid_rows = [(name, [Cell(c.status, _run_title(c), f"/runs/{c.id}")
                         for c in timeline.get(name, [])]) for name in names]
    runs_total = sum(len(cells) for _, cells in grid_rows)
    counts: dict[str, int] = {}
    for (_target, status), n in notification_counts(session, day_ago).items():
        counts[status] = counts.get(status, 0) + n
    states = [s["state"] for s in sources]
    overall = FAILING if FAILING in states else STALE if STALE in states else FRESH
    return {
        "now": now, "now_stamp": stamp(now), "refresh_seconds": REFRESH_SECONDS,
        "overall": overall, "sources": sources,
        # Names printed beside the grid, which scrolls; rows end together, newest on the right.
        "grid": Markup(status_grid(grid_rows, f"Runs of the last 24 hours: {runs_total}",
                                   cell=GRID_CELL, gap=GRID_GAP, label_width=0,
                                   align_end=True)) if runs_total else None,
        "grid_names": names,
        "runs_total": runs_total,
        "grid_statuses": sorted({c.status for _, cells in grid_rows for c in cells}),
        "quality": quality_counts(session, day_ago),
        "anomaly_assets": anomaly_assets(session, day_ago),
        "broker": broker(),
        "notifications": recent_notifications(session, RECENT_NOTIFICATIONS),
        "notification_counts": counts,
        "assets": top_assets(session),
        "backfills": recent_backfills(session),
        "storage": _storage(storage_figures(session, settings)),
        "colours": STATUS_COLOURS, "ago": ago, "stamp": stamp,
    }


def asset_chart(chart: PriceChart, title: str, requested: str | None,
                query: Mapping[str, str]) -> dict[str, Any]:
    """The price chart (one line per source with its flagged points ringed and its latest
    point labelled, the consensus dashed) on the `requested` scale or the default, and links
    (`query` with the other `scale`) to switch."""
    series = [Series(source, points, marked=chart.flagged.get(source, ()), latest=True)
              for source, points in sorted(chart.points.items())]
    if chart.consensus:
        series.append(Series("consensus (median)", chart.consensus, dashed=True))
    values = [y for s in series for _, y in [*s.points, *s.marked]]
    scale, ratio = choose_scale(values, requested), span_ratio(values)
    kept = {k: v for k, v in query.items() if k != "scale"}
    return {"svg": Markup(line_chart(series, title, width=900, height=360, scale=scale)),
            "scale": scale, "scale_requested": requested, "log_span": f"{LOG_SPAN:.0f}",
            "span": None if ratio is None else f"{ratio:,.0f}" if ratio >= 10 else f"{ratio:.3g}",
            "scale_links": {name: "?" + urlencode({**kept, "scale": name})
                            for name in SCALES if name != scale}}
