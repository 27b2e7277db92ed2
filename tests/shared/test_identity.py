"""Identity unification on the real recorded payloads: never merge on symbol alone."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sqlalchemy import Engine, text

from shared.db import unit_of_work
from shared.identity import IdentityHint, load_aliases, normalize_name, resolve_assets

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _coingecko_hints() -> list[IdentityHint]:
    items = json.loads((FIXTURES / "coingecko" /
                        "coins_markets_usd_page1_per250_2025-02-09.json").read_text())
    return [IdentityHint(i["id"], i["symbol"].upper(), i["name"]) for i in items]


def _paprika_hints(ids: set[str]) -> list[IdentityHint]:
    coins = json.loads((FIXTURES / "coinpaprika" / "v1_coins_2022-01-07.json").read_text())
    return [IdentityHint(c["id"], c["symbol"].upper(), c["name"]) for c in coins if c["id"] in ids]


def test_normalize_name() -> None:
    assert normalize_name("Wrapped Bitcoin") == normalize_name("wrapped-bitcoin") == \
        "wrappedbitcoin"
    assert normalize_name("Bitcoin") != normalize_name("Binance-Peg Bitcoin")


def test_shared_symbols_stay_separate_and_real_coins_unify(clean_db: Engine,
                                                           csv_dir: Path) -> None:
    aliases = load_aliases(csv_dir / "asset_aliases.csv")
    with unit_of_work(clean_db) as session:
        gecko = resolve_assets(session, "coingecko", _coingecko_hints(), aliases)
    assert len(set(gecko.values())) == 250  # every CoinGecko id its own asset
    with clean_db.connect() as conn:
        per_symbol = Counter(conn.execute(text("SELECT symbol FROM assets")).scalars())
    assert (per_symbol["WETH"], per_symbol["WBTC"], per_symbol["USDT"], per_symbol["DOGE"]) \
        == (5, 3, 2, 2)

    paprika_ids = {"btc-bitcoin", "eth-ethereum", "usdt-tether", "doge-dogecoin",
                   "wbtc-wrapped-bitcoin", "weth-weth", "usdt-usdt", "wbtc-worldbtc",
                   "btc-baby-tomo-chain"}
    with unit_of_work(clean_db) as session:
        paprika = resolve_assets(session, "coinpaprika", _paprika_hints(paprika_ids), aliases)
        csv = resolve_assets(session, "csv", [IdentityHint("BTC:Bitcoin", "BTC", "Bitcoin"),
                                              IdentityHint("BTC", "BTC", None),
                                              IdentityHint("ETH:Ethereum", "ETH", "Ethereum"),
                                              IdentityHint("USDT:Tether", "USDT", "Tether"),
                                              IdentityHint("DOGE", "DOGE", None)], aliases)
    assert paprika["btc-bitcoin"] == gecko["bitcoin"] == csv["BTC:Bitcoin"] == csv["BTC"]
    assert paprika["eth-ethereum"] == gecko["ethereum"] == csv["ETH:Ethereum"]
    assert paprika["usdt-tether"] == gecko["tether"] == csv["USDT:Tether"]
    assert paprika["doge-dogecoin"] == gecko["dogecoin"]
    assert paprika["wbtc-wrapped-bitcoin"] == gecko["wrapped-bitcoin"]
    assert paprika["weth-weth"] == gecko["weth"]
    # Same symbol, different coin: each gets an asset of its own.
    assert paprika["usdt-usdt"] not in gecko.values()
    assert paprika["wbtc-worldbtc"] not in gecko.values()
    assert paprika["btc-baby-tomo-chain"] not in gecko.values()
    # A bare symbol with no alias is not enough evidence.
    assert csv["DOGE"] not in gecko.values()


def test_resolution_is_stable_and_creates_nothing_twice(clean_db: Engine, csv_dir: Path) -> None:
    aliases = load_aliases(csv_dir / "asset_aliases.csv")
    hints = _coingecko_hints()
    with unit_of_work(clean_db) as session:
        first = resolve_assets(session, "coingecko", hints, aliases)
    with unit_of_work(clean_db) as session:
        second = resolve_assets(session, "coingecko", list(reversed(hints)), aliases)
    assert first == second
    with clean_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM assets")).scalar_one() == 250
        slugs = set(conn.execute(text("SELECT slug FROM assets")).scalars())
    assert {"bitcoin", "weth", "binance-peg-weth"} <= slugs


def test_alias_file_pins_an_asset(clean_db: Engine, tmp_path: Path) -> None:
    alias_file = tmp_path / "aliases.csv"
    alias_file.write_text("source,source_asset_id,asset_slug,symbol,name\n"
                          "csv,XBT,bitcoin,BTC,Bitcoin\n")
    aliases = load_aliases(alias_file)
    with unit_of_work(clean_db) as session:
        csv = resolve_assets(session, "csv", [IdentityHint("XBT", "XBT", None)], aliases)
        gecko = resolve_assets(session, "coingecko",
                               [IdentityHint("bitcoin", "BTC", "Bitcoin")], aliases)
    assert csv["XBT"] == gecko["bitcoin"]
