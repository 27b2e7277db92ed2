"""Capacity arithmetic: rows and bytes per day and steady-state disk per retention profile.

`python -m bench.capacity --quote-bytes B --raw-bytes R` prints the tables of
docs/capacity.md from bytes measured by the `storage` bench case (docs/benchmarks.md). A
profile names the four retention settings (RAW_RETENTION_DAYS, QUOTES_FULL_RESOLUTION_DAYS,
QUOTES_HOURLY_DAYS; daily rollups are kept for ever); what a profile keeps on disk is its
horizons plus, for partitioned data, up to one partition more (retention drops a partition
only once all of it is past the horizon).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

DAY_SECONDS = 86_400
GB = 1e9
# Partition widths (shared/storage/partitions.py): a week of quotes, a month of raw blocks,
# a year of rollups; the most a layer keeps past its horizon (the worst case is counted).
QUOTES_GRAIN_DAYS = 7
RAW_GRAIN_DAYS = 7
ROLLUP_GRAIN_DAYS = 31


@dataclass(frozen=True)
class Layout:
    """Partition widths in days: what a layer may keep past its horizon."""

    quotes: int = QUOTES_GRAIN_DAYS
    raw: int = RAW_GRAIN_DAYS
    rollups: int = ROLLUP_GRAIN_DAYS


# Raw blocks by the week and rollups by the month (shared.storage.partitions, since
# 2026-12-07); before that a month and a year, which no useful profile fits in 100 GB.
TODAY = Layout()
EARLIER = Layout(raw=31, rollups=366)


@dataclass(frozen=True)
class Profile:
    """Retention horizons in days; None keeps that layer for ever."""

    name: str
    raw_days: int | None
    full_days: int | None
    hourly_days: int | None
    note: str = ""

    def env(self) -> dict[str, str]:
        """The profile as settings (a layer kept for ever: its setting left unset)."""
        pairs = (("RAW_RETENTION_DAYS", self.raw_days),
                 ("QUOTES_FULL_RESOLUTION_DAYS", self.full_days),
                 ("QUOTES_HOURLY_DAYS", self.hourly_days))
        return {name: str(days) for name, days in pairs if days is not None}


PROFILES = {p.name: p for p in (
    Profile("keep-all", None, None, None, "nothing expires (the default)"),
    Profile("year-100gb", 7, 14, 90, "a year of the default schedule within 100 GB"),
    Profile("audit", 30, 30, 365, "raw payloads a month, full resolution a month"),
    Profile("lean", 1, 7, 30, "the least kept: raw a day, full resolution a week"),
)}


@dataclass(frozen=True)
class Bytes:
    """Bytes on disk per stored row of each layer (tables, indexes and TOAST)."""

    quote: float
    raw: float
    hourly: float
    daily: float


@dataclass(frozen=True)
class Schedule:
    """What is fetched: coins (quotes per tick, all sources) every `interval` seconds."""

    coins: int
    interval: int

    @property
    def quotes_per_day(self) -> float:
        """Quotes (and raw items) written per day."""
        return self.coins * DAY_SECONDS / self.interval

    @property
    def hourly_per_day(self) -> float:
        """Hourly rollup rows per day (one per coin and hour, if it ticks at least hourly)."""
        return self.coins * min(24.0, DAY_SECONDS / self.interval)

    @property
    def daily_per_day(self) -> float:
        """Daily rollup rows per day."""
        return float(self.coins)


DEFAULT_SCHEDULE = Schedule(19_000, 300)  # 17,000 CoinGecko + ~2,000 CoinPaprika


def kept_days(horizon: int | None, grain: int, elapsed: int) -> float:
    """Days of a layer on disk after `elapsed` days: its horizon plus up to one partition."""
    if horizon is None:
        return float(elapsed)
    return float(min(elapsed, horizon + grain))


def disk_bytes(profile: Profile, schedule: Schedule, per_row: Bytes, elapsed: int,
               layout: Layout = TODAY) -> dict[str, float]:
    """Bytes on disk per layer after `elapsed` days of `schedule` under `profile`, and `all`.

    Full-resolution quotes are kept `full_days` (+ a week's partition); hourly rollups cover
    what is older than that up to `hourly_days` (+ a month's partition); daily rollups whatever
    is older (for ever). With no full-resolution horizon no rollup is needed: every quote is kept.
    """
    full = kept_days(profile.full_days, layout.quotes, elapsed)
    out = {"quotes": schedule.quotes_per_day * per_row.quote * full,
           "raw": schedule.quotes_per_day * per_row.raw
           * kept_days(profile.raw_days, layout.raw, elapsed)}
    if profile.full_days is None:
        out["hourly"] = out["daily"] = 0.0
    else:
        hourly_end = elapsed if profile.hourly_days is None else min(
            elapsed, profile.hourly_days + layout.rollups)
        out["hourly"] = schedule.hourly_per_day * per_row.hourly * max(0.0, hourly_end - full)
        out["daily"] = schedule.daily_per_day * per_row.daily * max(0.0, elapsed - hourly_end)
    out["all"] = sum(out.values())
    return out


def daily_growth(schedule: Schedule, per_row: Bytes) -> dict[str, float]:
    """Rows and bytes written per day before any retention."""
    rows = schedule.quotes_per_day
    return {"quotes_per_day": rows, "bytes_per_day": rows * (per_row.quote + per_row.raw)}


def render(per_row: Bytes, schedules: list[Schedule], elapsed: int) -> str:
    """The Markdown tables of docs/capacity.md for these bytes per row."""
    lines = ["| coins x sources | interval | quotes/day | GB/day (quotes + raw) |"
             + "".join(f" {name}, {elapsed} days |" for name in PROFILES),
             "|---|---|---|---|" + "---|" * len(PROFILES)]
    for schedule in schedules:
        growth = daily_growth(schedule, per_row)
        cells = [f"{schedule.coins:,}", f"{schedule.interval} s",
                 f"{growth['quotes_per_day'] / 1e6:.2f}M", f"{growth['bytes_per_day'] / GB:.2f}"]
        cells += [f"{disk_bytes(p, schedule, per_row, elapsed)['all'] / GB:,.1f} GB"
                  for p in PROFILES.values()]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| profile | raw | full resolution | hourly | daily | "
              + " | ".join(f"{layer} GB" for layer in ("quotes", "raw", "hourly", "daily", "all"))
              + " | all GB, monthly raw and yearly rollup partitions (before) |", "|---" * 11 + "|"]
    for p in PROFILES.values():
        disk = disk_bytes(p, DEFAULT_SCHEDULE, per_row, elapsed)
        days = [f"{d} d" if d else "for ever" for d in (p.raw_days, p.full_days, p.hourly_days)]
        lines.append("| " + " | ".join([f"`{p.name}`", *days, "for ever"] + [
            f"{disk[layer] / GB:,.1f}" for layer in ("quotes", "raw", "hourly", "daily", "all")]
            + [f"{disk_bytes(p, DEFAULT_SCHEDULE, per_row, elapsed, EARLIER)['all'] / GB:,.1f}"])
            + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the capacity tables for measured bytes per row."""
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.add_argument("--quote-bytes", type=float, required=True,
                        help="quotes table + index per quote (bench case storage)")
    parser.add_argument("--raw-bytes", type=float, required=True,
                        help="raw storage per API quote (bench case storage)")
    parser.add_argument("--hourly-bytes", type=float, default=None,
                        help="per rollup row (default: as a quote)")
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    rollup = args.hourly_bytes if args.hourly_bytes is not None else args.quote_bytes
    per_row = Bytes(args.quote_bytes, args.raw_bytes, rollup, rollup)
    pairs = ((2_000, 300), (19_000, 300), (19_000, 60), (50_000, 300), (19_000, 3_600))
    schedules = [Schedule(coins, interval) for coins, interval in pairs]
    sys.stdout.write(render(per_row, schedules, args.days))
    return 0


if __name__ == "__main__":
    sys.exit(main())
