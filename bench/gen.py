"""Synthetic Kaggle-format price files ("Cryptocurrency Historical Prices"), coin by coin."""
from __future__ import annotations

import math
import random
from datetime import date, timedelta
from pathlib import Path
from typing import TextIO

HEADER = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap\n"
FIRST_DAY = date(2015, 1, 1)


def coin(index: int, prefix: str = "") -> tuple[str, str]:
    """(name, symbol) of synthetic coin `index`: unique, Kaggle-like spelling."""
    return f"{prefix}Coin {index:06d}", f"{prefix}C{index:06d}"


def _days(first: int, count: int) -> list[str]:
    return [f"{FIRST_DAY + timedelta(days=first + d)} 23:59:59" for d in range(count)]


# A noisy day's close is at least this factor away from the day before (the quality checks'
# jump factor is 10 by default: QUALITY_JUMP_FACTOR).
NOISY_MIN_FACTOR = 20.0


def _noisy_close(rng: random.Random, previous: float) -> float:
    """A close drawn afresh (log-uniform, 1e-4 to 1e4), redrawn until >= 20x from `previous`."""
    while True:
        price = math.exp(rng.uniform(-9.0, 9.0))
        if abs(math.log(price / previous)) >= math.log(NOISY_MIN_FACTOR):
            return price


def write_rows(out: TextIO, coins: range, days: range, seed: int, prefix: str = "",
               sno: int = 1, noisy: bool = False) -> int:
    """Append coin-major rows (every day of a coin, then the next coin); returns the next SNo.

    Values look like the real files: float-derived decimals with up to 17 significant digits,
    prices from fractions of a cent to thousands, volumes and market caps in the millions.
    Realistic (the default): each coin's close moves a few % a day (a random walk, sigma 4%).
    `noisy`: each day's close is drawn independently of the last, at least 20x away from it,
    so every line but a coin's first is a `jump` for the quality checks.
    """
    rng = random.Random(seed)
    stamps = _days(days.start, len(days))
    lines: list[str] = []
    for index in coins:
        name, symbol = coin(index, prefix)
        price = math.exp(rng.uniform(-9.0, 9.0))
        supply = rng.uniform(1e6, 1e10)
        for stamp in stamps:
            open_ = price
            if noisy:
                price = _noisy_close(rng, price)
            else:
                price = max(price * math.exp(rng.gauss(0.0, 0.04)), 1e-9)
            high = max(open_, price) * (1 + rng.random() * 0.03)
            low = min(open_, price) * (1 - rng.random() * 0.03)
            volume = price * supply * rng.uniform(0.001, 0.2)
            lines.append(
                f"{sno},{name},{symbol},{stamp},{high!r},{low!r},{open_!r},{price!r},"
                f"{volume!r},{price * supply!r}\n"
            )
            sno += 1
        if len(lines) >= 50_000:
            out.write("".join(lines))
            lines.clear()
    out.write("".join(lines))
    return sno


def kaggle_file(path: Path, coins: int, days: int, seed: int = 6, prefix: str = "",
                noisy: bool = False) -> Path:
    """Write `coins` x `days` rows with a header to `path` (kept if it already exists).

    The name should say what the file holds: an existing file is reused as it is.
    """
    if path.exists() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    with partial.open("w", newline="") as out:
        out.write(HEADER)
        write_rows(out, range(1, coins + 1), range(days), seed, prefix, noisy=noisy)
    partial.rename(path)
    return path


def last_closes(path: Path) -> dict[str, float]:
    """Each coin's last Close in a Kaggle-format file (read once, outside any timed section)."""
    closes: dict[str, float] = {}
    with path.open() as rows:
        next(rows)
        for line in rows:
            cells = line.split(",", 8)
            closes[cells[1]] = float(cells[7])
    return closes


def append_days(path: Path, coins: int, first_day: int, days: int, seed: int = 7,
                prefix: str = "") -> int:
    """Append `days` new days for every coin (day-major at the end of the file); returns lines.

    Each coin's walk goes on from its last close with the same daily moves as write_rows, so an
    append looks like a real day of prices (not a jump the quality checks would flag).
    `prefix` is the one the file's coins were written with (kaggle_file).
    """
    rng = random.Random(seed)
    stamps = _days(first_day, days)
    closes = last_closes(path)
    lines = []
    sno = 10_000_000
    for stamp in stamps:
        for index in range(1, coins + 1):
            name, symbol = coin(index, prefix)
            previous = closes.get(name) or math.exp(rng.uniform(-9.0, 9.0))
            price = closes[name] = max(previous * math.exp(rng.gauss(0.0, 0.04)), 1e-9)
            lines.append(f"{sno},{name},{symbol},{stamp},{price * 1.01!r},{price * 0.99!r},"
                         f"{price!r},{price!r},{price * 1e6!r},{price * 1e8!r}\n")
            sno += 1
    with path.open("a", newline="") as out:
        out.write("".join(lines))
    return len(lines)
