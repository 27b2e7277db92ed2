"""Deep paging by cursor while new quotes are written: no row missed, none repeated."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from shared.config import Settings
from tests.api.helpers import coins_csv
from tests.helpers.csv_runs import HEADER, only_file, run_csv


def _keys(body: dict[str, Any]) -> list[tuple[int, str]]:
    return [(r["asset_id"], r["source"]) for r in body["data"]]


@pytest.mark.parametrize("sort", ["symbol", "-asset_id", "asset_id"])
def test_cursor_paging_survives_concurrent_runs(
    clean_db: Engine, client: Any, settings: Settings, csv_dir: Path, sort: str
) -> None:
    path = only_file(csv_dir, "coins.csv", HEADER + coins_csv(100, 60, symbol_prefix="M"))
    assert run_csv(clean_db, settings)["inserted"] == 60
    before = client.get("/data?page_size=500").get_json()
    original = set(_keys(before))
    assert len(original) == 60

    seen: list[tuple[int, str]] = []
    body = client.get(f"/data?sort={sort}&page_size=7").get_json()
    batch = 0
    while True:
        seen.extend(_keys(body))
        cursor = body["pagination"]["next_cursor"]
        if cursor is None:
            break
        # Between two page fetches another run lands: new coins that sort before and after
        # the current position, and new quotes for coins already listed (current rows move).
        batch += 1
        with path.open("a") as handle:
            handle.write(coins_csv(1000 + 10 * batch, 2, symbol_prefix="A", day=batch + 1))
            handle.write(coins_csv(2000 + 10 * batch, 2, symbol_prefix="Z", day=batch + 1))
            handle.write(coins_csv(100 + batch, 3, symbol_prefix="M", day=batch + 1,
                                   price_prefix="9."))
        run = run_csv(clean_db, settings)
        assert run["status"] == "succeeded" and run["inserted"] == 7
        body = client.get(f"/data?sort={sort}&page_size=7&cursor={cursor}").get_json()

    assert batch >= 8
    assert len(seen) == len(set(seen)), "a row was repeated"
    assert original <= set(seen), f"rows missed: {sorted(original - set(seen))}"
    after = client.get("/data?page_size=500&total=true").get_json()
    assert after["pagination"]["total"] == 60 + 4 * batch


def test_offset_paging_repeats_rows_where_the_cursor_does_not(
    clean_db: Engine, client: Any, settings: Settings, csv_dir: Path
) -> None:
    """The reason for cursors: rows inserted ahead of the position shift offset pages."""
    path = only_file(csv_dir, "coins.csv", HEADER + coins_csv(100, 20, symbol_prefix="M"))
    run_csv(clean_db, settings)
    first = client.get("/data?sort=symbol&page_size=10").get_json()
    with path.open("a") as handle:
        handle.write(coins_csv(500, 5, symbol_prefix="A", day=2))
    run_csv(clean_db, settings)
    by_offset = client.get("/data?sort=symbol&page_size=10&page=2").get_json()
    by_cursor = client.get(
        f"/data?sort=symbol&page_size=10&cursor={first['pagination']['next_cursor']}").get_json()
    assert set(_keys(first)) & set(_keys(by_offset))
    assert not set(_keys(first)) & set(_keys(by_cursor))
    assert len(by_cursor["data"]) == 10
