"""A CSV file's flags through the real write path: stored in the quotes' own rows (no flag
document), served by history, publish and /anomalies exactly as the checks find them."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from shared.config import Settings
from shared.quality.checks import QualityThresholds, check_columns
from tests.helpers.csv_runs import HEADER, only_file, run_csv

UTC = timezone.utc
DAY0 = datetime(2021, 1, 1, 23, 59, 59, tzinfo=UTC)


def _line(n: int, name: str, symbol: str, day: int, close: str) -> str:
    date = (DAY0 + timedelta(days=day)).strftime("%Y-%m-%d %H:%M:%S")
    return f"{n},{name},{symbol},{date},2,1,1,{close},10,{close}00\n"


# Coin -> its (day, close) rows in file order: every move 100x (each row but the first is a
# jump: one run of flagged lines), jumps here and there, and a coin with a zero close and its
# lines out of time order (the row-by-row rule).
COINS: dict[str, list[tuple[int, str]]] = {
    "Noisy": [(d, "1.5" if d % 2 else "150") for d in range(40)],
    "Spiky": [(d, "900" if d in (5, 6, 20) else "9.25") for d in range(30)],
    "Odd": [(3, "2"), (1, "2"), (2, "0"), (5, "40"), (4, "2.5"), (6, "41"), (0, "0.1")],
}


def _expected(rows: dict[str, list[tuple[int, str]]],
              previous: dict[str, tuple[str, float]]) -> dict[tuple[str, str], list[Any]]:
    """(coin, observed_at) -> the flags check_columns gives, per coin as one key."""
    found: dict[tuple[str, str], list[Any]] = {}
    for coin, days in rows.items():
        stamps = [(DAY0 + timedelta(days=d)).isoformat() for d, _ in days]
        flags = check_columns("csv", [coin] * len(days), stamps, [float(c) for _, c in days],
                              QualityThresholds(), previous=(
                                  {coin: previous[coin]} if coin in previous else None))
        found.update({(coin, stamps[i]): f for i, f in flags.items()})
    return found


def _served(client: Any, engine: Engine) -> dict[tuple[str, str], list[Any]]:
    """(coin, observed_at) -> the flags of every flagged quote, as history serves them."""
    with engine.connect() as conn:
        assets = dict(conn.execute(text("SELECT name, id FROM assets")).all())
    served: dict[tuple[str, str], list[Any]] = {}
    for coin in COINS:
        body = client.get(f"/data/{assets[coin]}/history?source=csv&page_size=500").get_json()
        served.update({(coin, q["observed_at"]): q["quality"]["flags"]
                       for q in body["data"] if q["quality"]["flags"]})
    return served


def test_flags_live_in_the_quotes_rows_and_are_served_as_checked(
    clean_db: Engine, settings: Settings, csv_dir: Path, client: Any
) -> None:
    body = HEADER + "".join(_line(n, coin, coin[:3].upper(), day, close) for n, (coin, day, close)
                            in enumerate(((c, d, p) for c, rows in COINS.items()
                                          for d, p in rows), 1))
    path = only_file(csv_dir, "flags.csv", body)
    assert run_csv(clean_db, settings)["inserted"] == sum(map(len, COINS.values()))
    expected = _expected(COINS, {})
    assert len(expected) == 39 + 4 + 2
    assert _served(client, clean_db) == expected

    # Appended days: each coin's first new row is judged against its published quote.
    more = {"Noisy": [(40, "120"), (41, "1.2")], "Spiky": [(30, "9.3")], "Odd": [(7, "4100")]}
    with path.open("a") as handle:
        handle.write("".join(_line(900 + n, coin, coin[:3].upper(), day, close)
                             for n, (coin, day, close) in enumerate(
                                 (c, d, p) for c, rows in more.items() for d, p in rows)))
    assert run_csv(clean_db, settings)["inserted"] == 4
    published = {"Noisy": ((DAY0 + timedelta(days=39)).isoformat(), 1.5),
                 "Spiky": ((DAY0 + timedelta(days=29)).isoformat(), 9.25),
                 "Odd": ((DAY0 + timedelta(days=6)).isoformat(), 41.0)}
    expected.update(_expected(more, published))
    assert _served(client, clean_db) == expected

    with clean_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM quote_flags")).scalar_one() == 0
        stored = conn.execute(text(
            "SELECT count(*) FROM quotes WHERE flag_set IS NOT NULL")).scalar_one()
        counted = conn.execute(text("SELECT sum(quotes) FROM flag_sets")).scalar_one()
        current = dict(conn.execute(text(
            "SELECT a.name, c.quality FROM current_quotes c JOIN assets a ON a.id = c.asset_id"
            )).all())
    assert stored == counted == len(expected) == 45 + 3
    # The newest quote of each coin is published with its flags (Spiky's last one is clean).
    newest = {coin: max(rows)[0] for coin, rows in more.items()}
    for coin, day in newest.items():
        flags = expected.get((coin, (DAY0 + timedelta(days=day)).isoformat()))
        assert current[coin] == ({"status": "flagged", "flags": flags} if flags else None)
    # One anomaly per coin and batch, counting the coin's flagged quotes of that batch.
    anomalies = client.get("/anomalies?source=csv&kind=jump&page_size=50").get_json()["data"]
    counts = sorted((a["asset"]["name"], a["evidence"]["quotes"]) for a in anomalies)
    assert counts == [("Noisy", 2), ("Noisy", 39), ("Odd", 1), ("Odd", 2), ("Spiky", 4)]
