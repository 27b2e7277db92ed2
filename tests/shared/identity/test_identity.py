"""Identity unification on the real recorded payloads: never merge on symbol alone."""
from __future__ import annotations

from tests.conftest import ROOT
import json
import random
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from shared.db import unit_of_work
from shared.identity.resolve import (
    ONE_ID_PER_COIN,
    Alias,
    IdentityHint,
    load_aliases,
    normalize_name,
    resolve_assets,
    slugify,
)

FIXTURES = ROOT / "tests" / "fixtures"


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


# --- set-based resolution: cost, in-batch order, slugs, equivalence with the per-hint loop ---

@contextmanager
def _counting(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _rows(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql)))


def _new_coins(n: int, prefix: str) -> list[IdentityHint]:
    # Seven symbols shared by every coin: symbols alone must never merge them.
    return [IdentityHint(f"{prefix}-{i}", f"S{i % 7}", f"{prefix} Coin {i}") for i in range(n)]


def test_new_coins_cost_a_constant_number_of_queries(clean_db: Engine) -> None:
    counts, resolved = [], []
    for n, prefix in ((20, "small"), (600, "large")):
        for source in ("coingecko", "coinpaprika", "csv"):
            with unit_of_work(clean_db) as session, _counting(clean_db) as statements:
                known = resolve_assets(session, source, _new_coins(n, prefix), {})
            assert len(known) == n and len(set(known.values())) == n
            counts.append(len(statements))
            resolved.append(known)
    assert counts[:3] == counts[3:] and max(counts) <= 10, counts
    # CoinGecko created them; the other two sources matched them by symbol+name.
    assert resolved[0] == resolved[1] == resolved[2] and resolved[3] == resolved[4] == resolved[5]
    per_symbol = dict(_rows(clean_db, "SELECT symbol, count(*) FROM assets GROUP BY symbol"))
    assert sum(per_symbol.values()) == 620 and set(per_symbol) == {f"S{i}" for i in range(7)}
    # Mapped ids cost one query and no lock.
    with unit_of_work(clean_db) as session, _counting(clean_db) as statements:
        resolve_assets(session, "csv", _new_coins(600, "large"), {})
    assert not any("advisory" in s for s in statements) and len(statements) <= 2


def test_in_batch_order_matches_the_per_hint_loop(clean_db: Engine) -> None:
    with unit_of_work(clean_db) as session:
        session.execute(text("INSERT INTO assets (slug, symbol, name) VALUES "
                             "('tok-token', 'TOK', 'Token'), ('dup-a', 'DUP', 'Dup'), "
                             "('dup-b', 'DUP', 'dup')"))
        known: dict[str, int] = {}
        csv = resolve_assets(session, "csv", [
            IdentityHint("ABC:Foo Coin", "ABC", "Foo Coin"),
            IdentityHint("abc:foo-coin", "abc", "foo-coin"),  # same coin, created just above
            IdentityHint("XYZ", "XYZ", None),  # an asset named "XYZ"...
            IdentityHint("XYZ:xyz", "XYZ", "xyz"),  # ...which this one matches
        ], {}, known)
        paprika = resolve_assets(session, "coinpaprika", [
            IdentityHint("tok-token", "TOK", "Token"),  # takes the existing asset
            IdentityHint("tok-token-2", "TOK", "Token"),  # may not take it a second time
            IdentityHint("tok-token-3", "TOK", "Token"),  # nor the one created for -2
            IdentityHint("dup-dup", "DUP", "Dup"),  # two candidates: kept apart
        ], {})
    assert known == csv
    assert csv["ABC:Foo Coin"] == csv["abc:foo-coin"] and csv["XYZ"] == csv["XYZ:xyz"]
    assert len({paprika[k] for k in ("tok-token", "tok-token-2", "tok-token-3")}) == 3
    mapped = {sid: (slug, how) for sid, slug, how in _rows(
        clean_db, "SELECT m.source_asset_id, a.slug, m.matched_by FROM asset_source_ids m "
                  "JOIN assets a ON a.id = m.asset_id")}
    assert mapped == {
        "ABC:Foo Coin": ("abc-foo-coin", "new"), "abc:foo-coin": ("abc-foo-coin", "symbol+name"),
        "XYZ": ("xyz", "new"), "XYZ:xyz": ("xyz", "symbol+name"),
        "tok-token": ("tok-token", "symbol+name"), "tok-token-2": ("tok-token-2", "new"),
        "tok-token-3": ("tok-token-3", "new"), "dup-dup": ("dup-dup", "new"),
    }


def test_slug_collisions_get_suffixes_in_batch_and_against_existing(clean_db: Engine) -> None:
    with unit_of_work(clean_db) as session:
        # abc-foo holds a CoinPaprika id already; abc-foo-2, -4 and a long run of
        # qq-bar-N (longer than what is read up front) are other coins' slugs.
        session.execute(text(
            "INSERT INTO assets (slug, symbol, name) VALUES ('abc-foo', 'ABC', 'Foo'), "
            "('abc-foo-2', 'XYZ', 'Other'), ('abc-foo-4', 'XYZ', 'Other 4'), ('qq-bar', 'Q', 'x')"))
        session.execute(text(
            "INSERT INTO assets (slug, symbol, name) "
            "SELECT 'qq-bar-' || g, 'Q', 'x' FROM generate_series(2, 150) g"))
        session.execute(text(
            "INSERT INTO asset_source_ids (source, source_asset_id, asset_id, matched_by) "
            "SELECT 'coinpaprika', 'abc-foo', id, 'new' FROM assets WHERE slug = 'abc-foo'"))
        paprika = resolve_assets(session, "coinpaprika", [
            IdentityHint(f"p{i}", "ABC", "Foo") for i in range(3)] + [
            IdentityHint("qq", "QQ", "Bar"), IdentityHint("qq2", "QQ", "Bar 2"),
            IdentityHint("qq3", "QQ", "Bar")], {})
        csv = resolve_assets(session, "csv", [IdentityHint("ABC-FOO", "ABC-FOO", None)], {})
        gecko = resolve_assets(session, "coingecko", [IdentityHint("abc-foo", "DEF", "Def")], {})
    slug_of = dict(_rows(clean_db, "SELECT id, slug FROM assets"))
    # p0 -> abc-foo-3, p1 -> abc-foo-5 (-4 is taken), p2 -> abc-foo-6; qq -> qq-bar-151
    # (past the run read up front); qq2's own base qq-bar-2 is taken -> qq-bar-2-2; qq3's only
    # QQ/Bar candidate is qq's asset, which holds a CoinPaprika id: a new one, qq-bar-152.
    assert [slug_of[paprika[k]] for k in ("p0", "p1", "p2", "qq", "qq2", "qq3")] == [
        "abc-foo-3", "abc-foo-5", "abc-foo-6", "qq-bar-151", "qq-bar-2-2", "qq-bar-152"]
    assert slug_of[csv["ABC-FOO"]] == "abc-foo-7"
    assert slug_of[gecko["abc-foo"]] == "abc-foo-8"  # same slug, other symbol: not this coin


def test_alias_pins_and_overrides_inside_one_batch(clean_db: Engine, tmp_path: Path) -> None:
    alias_file = tmp_path / "aliases.csv"
    alias_file.write_text("source,source_asset_id,asset_slug,symbol,name\n"
                          "csv,XBT,bitcoin,BTC,Bitcoin\n"
                          "csv,BTC-OLD,bitcoin,,\n"
                          "csv,WEIRD,,ETH,Ethereum\n")
    aliases = load_aliases(alias_file)
    with unit_of_work(clean_db) as session:
        csv = resolve_assets(session, "csv", [
            IdentityHint("XBT", "XBT", None),  # creates "bitcoin"
            IdentityHint("BTC-OLD", "BTC", None),  # pinned to the asset created just above
            IdentityHint("ETH:Ethereum", "ETH", "Ethereum"),
            IdentityHint("WEIRD", "W", None),  # alias symbol+name match the asset above
        ], aliases)
        gecko = resolve_assets(session, "coingecko", [
            IdentityHint("bitcoin", "BTC", "Bitcoin"), IdentityHint("ethereum", "ETH", "Ethereum")
        ], aliases)
    assert csv["XBT"] == csv["BTC-OLD"] == gecko["bitcoin"]
    assert csv["ETH:Ethereum"] == csv["WEIRD"] == gecko["ethereum"]
    how = dict(_rows(clean_db, "SELECT source || ':' || source_asset_id, matched_by "
                               "FROM asset_source_ids"))
    assert how == {"csv:XBT": "alias", "csv:BTC-OLD": "alias", "csv:ETH:Ethereum": "new",
                   "csv:WEIRD": "alias+symbol+name", "coingecko:bitcoin": "slug",
                   "coingecko:ethereum": "symbol+name"}
    assert _rows(clean_db, "SELECT slug, symbol, name FROM assets ORDER BY id") == [
        ("bitcoin", "BTC", "Bitcoin"), ("eth-ethereum", "ETH", "Ethereum")]


def test_ids_and_names_with_array_syntax_survive(clean_db: Engine) -> None:
    odd = ['a"b', "c\\d", "{e,f}", " g ", "NULL", "", "ü-ß", "h'i", "j\\\"k"]
    hints = [IdentityHint(f"id{value}", f"S{i}{value}"[:64], value or None)
             for i, value in enumerate(odd)]
    for source in ("coingecko", "coinpaprika", "csv"):
        with unit_of_work(clean_db) as session:
            known = resolve_assets(session, source, hints, {})
        with unit_of_work(clean_db) as session:  # read back: every id mapped, as sent
            assert resolve_assets(session, source, hints, {}) == known
        stored = _rows(clean_db, "SELECT source_asset_id, symbol, name FROM asset_source_ids "
                                 f"WHERE source = '{source}'")
        assert sorted(stored) == sorted((h.source_asset_id, h.symbol, h.name) for h in hints)
    names = {n for (n,) in _rows(clean_db, "SELECT name FROM assets")}
    assert set(odd) - {""} <= names


def _sequential_resolve(session: Session, source: str, hints: list[IdentityHint],
                        aliases: dict[tuple[str, str], Alias]) -> dict[str, int]:
    """The per-hint algorithm resolve_assets replaced (queries per hint), as the reference."""
    def has_id(asset_id: int) -> bool:
        return source in ONE_ID_PER_COIN and bool(session.scalar(text(
            "SELECT count(*) FROM asset_source_ids WHERE asset_id = :a AND source = :s"),
            {"a": asset_id, "s": source}))

    def slug_id(slug: str, symbol: str | None = None) -> int | None:
        sql = "SELECT id FROM assets WHERE slug = :slug" + (" AND symbol = :sym" if symbol else "")
        return session.scalar(text(sql), {"slug": slug, "sym": symbol})

    def create(slug: str, symbol: str, name: str) -> int:
        candidate, n = slug, 1
        while slug_id(candidate) is not None:
            n += 1
            candidate = f"{slug}-{n}"
        return session.execute(text(
            "INSERT INTO assets (slug, symbol, name) VALUES (:slug, :sym, :name) RETURNING id"),
            {"slug": candidate, "sym": symbol.upper()[:64], "name": name[:300]}).scalar_one()

    def decide(hint: IdentityHint) -> tuple[int, str]:
        alias = aliases.get((source, hint.source_asset_id))
        symbol = (alias.symbol if alias and alias.symbol else hint.symbol).upper()
        name = alias.name if alias and alias.name else hint.name
        if alias and alias.asset_slug:
            found = slug_id(alias.asset_slug)
            return (found if found is not None else
                    create(alias.asset_slug, symbol, name or symbol)), "alias"
        if source == "coingecko":
            found = slug_id(hint.source_asset_id, symbol)
            if found is not None and not has_id(found):
                return found, "slug"
        if name:
            rows = session.execute(text("SELECT id, name FROM assets WHERE symbol = :s"),
                                   {"s": symbol})
            candidates = [a for a, n in rows if normalize_name(n) == normalize_name(name)
                          and not has_id(a)]
            if len(candidates) == 1:
                return candidates[0], "alias+symbol+name" if alias else "symbol+name"
        base = hint.source_asset_id if source == "coingecko" else slugify(
            f"{symbol}-{name}" if name else symbol)
        return create(slugify(base), symbol, name or symbol), "new"

    known: dict[str, int] = {}
    for hint in {h.source_asset_id: h for h in hints}.values():
        mapped = session.scalar(text("SELECT asset_id FROM asset_source_ids "
                                     "WHERE source = :s AND source_asset_id = :i"),
                                {"s": source, "i": hint.source_asset_id})
        if mapped is None:
            mapped, how = decide(hint)
            session.execute(text(
                "INSERT INTO asset_source_ids (source, source_asset_id, asset_id, symbol, name, "
                "matched_by) VALUES (:s, :i, :a, :sym, :name, :how)"),
                {"s": source, "i": hint.source_asset_id, "a": mapped, "sym": hint.symbol,
                 "name": hint.name, "how": how})
        known[hint.source_asset_id] = mapped
    return known


# Hints fit the mapping columns (64, 300); the alias file may override them with longer
# values, which the asset columns cut.
_SYMBOLS = ["AAA", "BBB", "WETH", "aaa", "q" * 64]
_NAMES = ["Alpha", "alpha!", "Al\"pha\\{,}", "Beta Coin", "beta-coin", "Wrapped Ether",
          "Ålpha", "", None, "L" * 300]
_BASE_STATE = [
    "INSERT INTO assets (slug, symbol, name) VALUES ('aaa-alpha', 'AAA', 'Alpha'), "
    "('aaa-alpha-2', 'AAA', 'alpha'), ('alpha', 'AAA', 'Alpha'), ('weth', 'WETH', 'WETH'), "
    "('bbb-beta-coin-3', 'BBB', 'Beta Coin'), ('pinned', 'BBB', 'Pinned'), ('aaa', 'AAA', 'x')",
    "INSERT INTO asset_source_ids (source, source_asset_id, asset_id, matched_by) "
    "SELECT 'coinpaprika', 'old-' || slug, id, 'new' FROM assets WHERE slug IN ('aaa-alpha', "
    "'bbb-beta-coin-3')",
    "INSERT INTO asset_source_ids (source, source_asset_id, asset_id, matched_by) "
    "SELECT 'coingecko', 'old-' || slug, id, 'new' FROM assets WHERE slug = 'weth'",
]


def _random_batches(rng: random.Random) -> tuple[dict[tuple[str, str], Alias],
                                                 list[tuple[str, list[IdentityHint]]]]:
    ids = ["alpha", "aaa-alpha", "weth", "beta-coin", "aaa", "aaa-alpha-2", "x", "pinned",
           "AAA:Alpha", "AAA", "bbb-beta-coin"]
    aliases: dict[tuple[str, str], Alias] = {}
    for source in ("csv", "coingecko", "coinpaprika"):
        for sid in rng.sample(ids, 3):
            aliases[(source, sid)] = Alias(
                source, sid, rng.choice([None, None, "pinned", "aaa-alpha", "new-pin"]),
                rng.choice([None, "AAA", "BBB", "Z" * 70]),
                rng.choice([None, "Alpha", "Beta Coin", "L" * 320]))
    batches = []
    for _ in range(4):
        source = rng.choice(["csv", "coingecko", "coinpaprika"])
        hints = [IdentityHint(rng.choice(ids) if rng.random() < 0.4 else f"id{rng.randrange(40)}",
                              rng.choice(_SYMBOLS), rng.choice(_NAMES))
                 for _ in range(rng.randrange(5, 40))]
        batches.append((source, hints))
    return aliases, batches


def _run(engine: Engine, resolve: Callable[..., dict[str, int]],
         aliases: dict[tuple[str, str], Alias],
         batches: list[tuple[str, list[IdentityHint]]]) -> tuple[Any, ...]:
    with engine.connect() as conn:
        outer = conn.begin()
        session = Session(bind=conn)
        for sql in _BASE_STATE:
            session.execute(text(sql))
        results = [resolve(session, source, hints, aliases) for source, hints in batches]
        session.flush()
        slug_of = dict(conn.execute(text("SELECT id, slug FROM assets")).all())
        assets = sorted(conn.execute(text("SELECT slug, symbol, name FROM assets")).all())
        mappings = sorted(conn.execute(text(
            "SELECT m.source, m.source_asset_id, a.slug, m.symbol, m.name, m.matched_by "
            "FROM asset_source_ids m JOIN assets a ON a.id = m.asset_id")).all())
        # Creation order too: ids are handed out in the order the loop created assets.
        order = list(conn.execute(text("SELECT slug FROM assets ORDER BY id")).scalars())
        session.close()
        outer.rollback()
    return ([{sid: slug_of[a] for sid, a in r.items()} for r in results], assets, mappings,
            order)


@pytest.mark.slow
def test_matches_the_per_hint_algorithm_on_mixed_batches(clean_db: Engine) -> None:
    for seed in range(40):
        aliases, batches = _random_batches(random.Random(seed))
        expected = _run(clean_db, _sequential_resolve, aliases, batches)
        assert _run(clean_db, resolve_assets, aliases, batches) == expected, seed
