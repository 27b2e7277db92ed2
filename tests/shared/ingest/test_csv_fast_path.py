"""The CSV fast path (COPY text, PostgreSQL parses the numbers) stores exactly what the general
path (csv module + Decimal) stores, and repeated rows fall back to ON CONFLICT."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from shared.config import Settings
from shared.sources import csv_source
from tests.conftest import count, truncate_tables
from tests.helpers.csv_runs import HEADER, only_file, run_csv

LINES = [
    "1,Bitcoin,BTC,2013-04-29 23:59:59,147.48800659179688,134.0,134.44400024414062,"
    "144.5399932861328,0.0,1603768864.5",
    "2,Bitcoin,BTC,2013-04-30 23:59:59,1.50E3,1e-7,0.000000123,100.10,1e4,2",     # exponents
    "3, Wrapped Bitcoin ,wbtc,2013-05-01,1,1,1,00012.50,0,0",                      # spaces, zeros
    '4,"Coin, Inc",CIN,2013-04-29 23:59:59,1,1,1,2,3,4',                          # quoted cell
    "5,Bitcoin,BTC,2013-05-02 23:59:59,1,1,1,3,-5,4",                             # negative volume
    "6,Bitcoin,BTC,2013-05-03 23:59:59,,1,1,4,5,",                                 # empty cells
    "7,Bitcoin,BTC,2013-05-04T23:59:59Z,1,1,1,5,5,5",                              # other date form
    "8,Bitcoin,BTC,2013-02-30 23:59:59,1,1,1,5,5,5",                               # no such day
    "9,Bitcoin,BTC,2013-05-05 23:59:59,1,1,1,-5,5,5",                              # negative price
    "10,Ðogecoin,DOGE,2013-05-05 23:59:59,1,1,1,0.07,5,5",                         # non-ASCII
    "11,Tab\tCoin,TAB,2013-05-05 23:59:59,1,1,1,1,1,1",                            # tab in a cell
    "12,,NONAME,2013-05-05 23:59:59,1,1,1,1,1,1",                                  # no name
    "13,Bitcoin,,2013-05-05 23:59:59,1,1,1,1,1,1",                                 # no symbol
    "14,Bitcoin,BTC,2013-05-06 23:59:59,1,1,1,1_000,1,1",                          # underscore
    "15,Bitcoin,BTC,2013-05-07 23:59:59,1,1,1,1,1",                                # 9 columns
    "16,Bitcoin,BTC,2013-05-08 23:59:59,5.8e-05,1E+05,1e-09,8.15e-05,58.06,9e+05",  # 0-padded
]
# Python's float repr pads exponents to two digits: still the fast path (one-digit value).
PADDED = LINES[-1]
FAST = csv_source._KAGGLE_FAST
BODY = HEADER + "\r\n".join(LINES[:7]) + "\r\n\r\n" + "\n".join(LINES[7:]) + "\n"

QUOTES = ("SELECT a.symbol, q.source_asset_id, q.observed_at, q.price_usd::text, "
          "q.market_cap_usd::text, q.volume_24h_usd::text, q.open_usd::text, q.high_usd::text, "
          "q.low_usd::text, q.close_usd::text, q.circulating_supply, q.rank, q.raw_hash "
          "FROM quotes q JOIN assets a ON a.id = q.asset_id ORDER BY 2, 3")
RAW = "SELECT source_key, content_hash, payload FROM raw_lines ORDER BY source_key"
REJECTS = "SELECT location, reason, payload FROM rejected_records ORDER BY location"


def _stored(engine: Engine) -> dict[str, list[Any]]:
    with engine.connect() as conn:
        return {name: [tuple(row) for row in conn.execute(text(sql))]
                for name, sql in (("quotes", QUOTES), ("raw", RAW), ("rejects", REJECTS))}


def test_fast_path_stores_what_the_general_path_stores(
    clean_db: Engine, settings: Settings, csv_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_file(csv_dir, "mixed.csv", BODY)
    fast_run = run_csv(clean_db, settings)
    fast = _stored(clean_db)

    truncate_tables(clean_db)
    monkeypatch.setattr(csv_source, "_KAGGLE_FAST", csv_source.re.compile(r"(?!)"))
    slow_run = run_csv(clean_db, settings)
    slow = _stored(clean_db)

    assert fast == slow
    assert (fast_run["fetched"], fast_run["inserted"], fast_run["rejected"]) == \
        (slow_run["fetched"], slow_run["inserted"], slow_run["rejected"])
    assert len(fast["quotes"]) == 11 and len(fast["rejects"]) == 5
    assert len(fast["raw"]) == len(LINES)
    exponents = next(q for q in fast["quotes"] if q[3] == "100.10")
    assert exponents[6:9] == ("0.000000123", "1500", "0.0000001")
    assert FAST.match(PADDED) is not None
    assert FAST.match(PADDED.replace("9e+05", "9e+16")) is None
    padded = next(q for q in fast["quotes"] if q[3] == "0.0000815")
    assert padded[4:10] == ("900000", "58.06", "0.000000001", "0.000058", "100000",
                            "0.0000815")


def test_repeated_rows_in_one_batch_fall_back_to_on_conflict(
    clean_db: Engine, settings: Settings, csv_dir: Path
) -> None:
    line = "1,Bitcoin,BTC,2013-04-29 23:59:59,1,1,1,2,3,4\n"
    same_day = "2,Bitcoin,BTC,2013-04-29 23:59:59,1,1,1,9,3,4\n"
    only_file(csv_dir, "repeats.csv", HEADER + line + line + same_day)
    run = run_csv(clean_db, settings)
    assert run["status"] == "succeeded"
    assert (run["fetched"], run["raw_inserted"], run["inserted"], run["unchanged"]) == \
        (3, 2, 1, 2)
    assert count(clean_db, "raw_lines") == 2 and count(clean_db, "quotes") == 1
    assert count(clean_db, "current_quotes") == 1
