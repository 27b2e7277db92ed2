"""CoinGeckoSource: exact numbers from the recorded page, paging, resume, faults and drift."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.config import load_settings
from shared.errors import UpstreamError
from shared.batch.types import Batch, content_hash
from shared.sources.coingecko import NUMBER_FIELDS, CoinGeckoSource, auth_headers
from shared.sources.exact_json import JsonItem, parse_json, parse_json_array
from shared.sources.http_errors import UpstreamUnavailable
from tests.shared.sources.conftest import gecko_batches, make_ctx, make_settings
from tests.upstream import ReplayUpstream

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "coingecko" / (
    "coins_markets_usd_page1_per250_2025-02-09.json"
)


@pytest.fixture(scope="module")
def recorded() -> list[JsonItem]:
    """The recorded page split into items."""
    return parse_json_array(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture
def page1(upstream: ReplayUpstream, redis_db: redis.Redis) -> Batch:
    """The batch of page 1 as a run fetches it (the replay upstream serves the recorded page)."""
    return gecko_batches(upstream)[0]


def number_texts(item_text: str) -> dict[str, Any]:
    """Every field with numbers kept as their JSON text (an independent reading of the item)."""
    texts: dict[str, Any] = json.loads(
        item_text, parse_float=lambda s: ("num", s), parse_int=lambda s: ("num", s)
    )
    return texts


def walk(parsed: Any, texts: Any, path: str = "") -> list[tuple[str, Any, str]]:
    """(path, parsed value, JSON text) for every number in an item."""
    if isinstance(texts, tuple) and texts[0] == "num":
        return [(path, parsed, texts[1])]
    if isinstance(texts, dict):
        return [x for k in texts for x in walk(parsed[k], texts[k], f"{path}.{k}")]
    if isinstance(texts, list):
        return [x for i, t in enumerate(texts) for x in walk(parsed[i], t, f"{path}[{i}]")]
    return []


def run(source: CoinGeckoSource, ctx: Any) -> list[Batch]:
    """All batches of a run."""
    return list(source.batches(ctx))


# -- the recorded page ------------------------------------------------------------------------


def test_every_number_of_every_item_is_the_exact_upstream_text(recorded: list[JsonItem]) -> None:
    """Each numeric field, exponent form included, parses to a Decimal with the same digits."""
    numbers = [n for item in recorded for n in walk(item.value, number_texts(item.text))]
    assert len(numbers) > 5000
    exponent = [n for n in numbers if "e" in n[2].lower()]
    assert len(exponent) == 75
    for path, value, text in numbers:
        assert isinstance(value, Decimal), path
        assert value.as_tuple() == Decimal(text).as_tuple(), (path, text)


def test_quotes_carry_the_exact_values(recorded: list[JsonItem], page1: Batch) -> None:
    """Every ParsedQuote number equals its item's JSON text; nulls stay None."""
    batch = page1
    assert batch.drift == [] and batch.rejects == []
    assert len(batch.quotes) == len(batch.raw) == 250
    for item, quote in zip(recorded, batch.quotes):
        texts = number_texts(item.text)
        for attr, name in NUMBER_FIELDS:
            value = getattr(quote, attr)
            if texts[name] is None:
                assert value is None, (quote.source_asset_id, attr)
            else:
                assert value.as_tuple() == Decimal(texts[name][1]).as_tuple()
        rank_text = texts["market_cap_rank"]
        assert quote.rank == (None if rank_text is None else int(rank_text[1]))
        assert quote.symbol == item.value["symbol"].upper()
        assert quote.source_asset_id == item.value["id"]
        assert quote.raw_hash == content_hash("coingecko", item.text)


def test_raw_items_are_the_exact_item_text(page1: Batch) -> None:
    """Raw payloads joined back give the recorded body, byte for byte."""
    batch = page1
    assert "[" + ",".join(r.payload for r in batch.raw) + "]" == FIXTURE.read_text(encoding="utf-8")
    assert all(r.hash == content_hash("coingecko", r.payload) for r in batch.raw)
    assert batch.raw[0].source_key == "bitcoin"


def test_quirks_of_the_recorded_page(page1: Batch) -> None:
    """Symbols are shared by several coins; a lagging coin keeps its own last_updated."""
    batch = page1
    by_symbol: dict[str, set[str]] = {}
    for quote in batch.quotes:
        by_symbol.setdefault(quote.symbol, set()).add(quote.source_asset_id)
    assert {s: len(ids) for s, ids in by_symbol.items() if len(ids) > 1} == {
        "USDT": 2, "DOGE": 2, "WBTC": 3, "WETH": 5,
    }
    lagging = next(q for q in batch.quotes if q.source_asset_id == "resolv-wstusr")
    assert lagging.observed_at == datetime(2025, 1, 28, 14, 7, 13, 341000, tzinfo=timezone.utc)
    assert lagging.high_usd is None and lagging.low_usd is None
    assert sum(1 for q in batch.quotes if q.max_supply is None) == 117
    assert all(q.observed_at.tzinfo is not None for q in batch.quotes)


def market_item(drop: tuple[str, ...] = (), **fields: Any) -> str:
    """A complete market item's JSON text, with some fields changed or dropped."""
    item: dict[str, Any] = {
        "id": "a", "symbol": "a", "name": "A", "current_price": 1, "market_cap": 2,
        "market_cap_rank": 3, "total_volume": 4, "high_24h": 5, "low_24h": 6,
        "circulating_supply": 7, "total_supply": 8, "max_supply": None,
        "last_updated": "2025-02-09T00:00:00Z",
    }
    item.update(fields)
    return json.dumps({k: v for k, v in item.items() if k not in drop}, separators=(",", ":"))


def test_bad_items_are_rejected_with_location_and_still_kept_raw(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """Missing id/symbol, null or garbled last_updated, junk numbers: Rejected, never dropped."""
    bad = [
        market_item(drop=("id",)),
        market_item(id="c", symbol=""),
        market_item(id="d", last_updated=None),
        market_item(id="e", last_updated="soon"),
        market_item(id="f", current_price="cheap"),
        market_item(id="g", market_cap_rank=1.5),
        market_item(id="h", drop=("last_updated",)),
        "[1,2]",
    ]
    (batch,) = gecko_batches(upstream, "[" + ",".join([market_item(), *bad]) + "]", page=3)
    assert [q.source_asset_id for q in batch.quotes] == ["a"]
    assert [r.location for r in batch.rejects] == [f"page 3 item {i}" for i in range(2, 10)]
    assert [r.reason for r in batch.rejects] == [
        "missing or empty 'id'",
        "missing or empty 'symbol'",
        "last_updated is null",
        "last_updated: not a timestamp: 'soon'",
        "current_price: not a number: 'cheap'",
        "market_cap_rank: not an integer: Decimal('1.5')",
        "missing field 'last_updated'",
        "item is not a JSON object",
    ]
    assert [r.payload for r in batch.rejects] == bad
    assert len(batch.raw) == 9 and batch.record_count == 9
    assert batch.raw[1].source_key == "page 3 item 2"  # no id: named by its location


def test_duplicates_across_pages_keep_the_first(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """A coin pushed onto the next page by a rank shift is quoted once per run."""
    pages = {
        1: "[" + market_item(id="x") + "," + market_item(id="w") + "]",
        2: "[" + market_item(id="x", last_updated="2025-02-09T00:00:01Z") + ","
           + market_item(id="y") + "]",
        3: "[]",
    }
    for page, body in pages.items():
        upstream.add_fault("status", endpoint="coingecko", page=page, status=200, body=body)
    first, second, last = gecko_batches(upstream, per_page=2)
    assert [q.source_asset_id for q in first.quotes + second.quotes] == ["x", "w", "y"]
    assert second.stats["duplicates"] == 1 and len(second.raw) == 2
    assert last.checkpoint["complete"] and last.raw == []


# -- against the replay upstream --------------------------------------------------------------


def test_full_run_pages_until_the_empty_page(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """The recorded 250 coins then an empty page: two batches, the last one complete."""
    ctx, events = make_ctx(make_settings(upstream), "coingecko", run_id=5)
    batches = run(CoinGeckoSource(backoff_base=0.01), ctx)
    assert [b.checkpoint for b in batches] == [
        {"run_id": 5, "page": 1, "complete": False},
        {"run_id": 5, "page": 2, "complete": True},
    ]
    assert [len(b.quotes) for b in batches] == [250, 0]
    assert all(b.checkpoint_key == "markets" for b in batches)
    assert events["http_requests"] == 2
    queries = [e["query"] for e in upstream.requests()]
    assert queries[0] == "vs_currency=usd&order=market_cap_desc&per_page=250&page=1"


def test_short_page_ends_the_run(redis_db: redis.Redis) -> None:
    """600 coins: 250 + 250 + 100, the short page is complete and no 4th request is made."""
    with ReplayUpstream(coingecko_total=600) as server:
        ctx, _ = make_ctx(make_settings(server), "coingecko")
        batches = run(CoinGeckoSource(backoff_base=0.01), ctx)
        assert len(server.requests()) == 3
    assert [(b.checkpoint["page"], b.checkpoint["complete"], len(b.quotes)) for b in batches] == [
        (1, False, 250), (2, False, 250), (3, True, 100),
    ]
    assert len({q.source_asset_id for b in batches for q in b.quotes}) == 600


def test_resume_starts_after_the_committed_page(redis_db: redis.Redis) -> None:
    """Same run, page 1 committed: the run continues at page 2; another run starts at 1."""
    with ReplayUpstream(coingecko_total=600) as server:
        settings = make_settings(server)
        saved = {"markets": {"run_id": 9, "page": 1, "complete": False}}
        ctx, _ = make_ctx(settings, "coingecko", run_id=9, checkpoints=saved)
        resumed = run(CoinGeckoSource(backoff_base=0.01), ctx)
        assert [b.checkpoint["page"] for b in resumed] == [2, 3]
        assert [e["page"] for e in server.requests()] == [2, 3]
        server.reset()
        fresh_ctx, _ = make_ctx(settings, "coingecko", run_id=10, checkpoints=saved)
        assert [b.checkpoint["page"] for b in run(CoinGeckoSource(), fresh_ctx)] == [1, 2, 3]
        server.reset()
        done = {"markets": {"run_id": 9, "page": 3, "complete": True}}
        done_ctx, _ = make_ctx(settings, "coingecko", run_id=9, checkpoints=done)
        assert run(CoinGeckoSource(), done_ctx) == []
        assert server.requests() == []


def test_permanent_error_on_page_2_yields_page_1_only(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """A 401 on page 2 raises UpstreamError; page 1's batch was yielded, page 2's never."""
    upstream.reset(coingecko_total=500)
    upstream.add_fault("401", endpoint="coingecko", page=2)
    ctx, _ = make_ctx(make_settings(upstream), "coingecko")
    got: list[Batch] = []
    with pytest.raises(UpstreamError) as excinfo:
        for batch in CoinGeckoSource(backoff_base=0.01).batches(ctx):
            got.append(batch)
    assert excinfo.value.status == 401
    assert "page=2" in str(excinfo.value)
    assert [b.checkpoint["page"] for b in got] == [1]


def test_transient_errors_on_a_page_are_retried(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """A burst of 5xx on page 2 is retried; the run completes and counts its retries."""
    upstream.reset(coingecko_total=500)
    upstream.add_fault("5xx", endpoint="coingecko", page=2, count=2, status=500)
    ctx, events = make_ctx(make_settings(upstream), "coingecko")
    batches = run(CoinGeckoSource(backoff_base=0.01), ctx)
    assert [len(b.quotes) for b in batches] == [250, 250, 0]
    assert events["http_retries"] == 2 and events["http_requests"] == 5


def test_persisting_truncation_fails_the_page_without_a_batch(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """Truncated bodies every time: UpstreamUnavailable, and nothing partial is yielded."""
    upstream.add_fault("truncated", endpoint="coingecko")
    ctx, _ = make_ctx(make_settings(upstream, HTTP_MAX_RETRIES="1"), "coingecko")
    with pytest.raises(UpstreamUnavailable, match="connection broken"):
        run(CoinGeckoSource(backoff_base=0.01), ctx)


# -- drift ------------------------------------------------------------------------------------


def test_confident_rename_and_retype_are_mapped(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """current_price -> price and market_cap as a string: mapped, values unchanged, recorded."""
    expected = gecko_batches(upstream)[0]  # the page as served without drift
    upstream.add_fault("drift", endpoint="coingecko", page=1,
                       rename={"current_price": "price"}, retype={"market_cap": "string"})
    first = gecko_batches(upstream)[0]
    assert first.rejects == [] and len(first.quotes) == 250
    kinds = {(e.kind, e.field, e.observed, e.mapped) for e in first.drift}
    assert kinds == {("renamed", "current_price", "price", True),
                     ("retyped", "market_cap", "string", True)}
    assert all(e.confidence >= 0.7 for e in first.drift)
    for got, want in zip(first.quotes, expected.quotes):
        assert got.price_usd == want.price_usd and got.market_cap_usd == want.market_cap_usd
    # The raw layer keeps the drifted text as received.
    assert '"price":96114.08481738689' in first.raw[0].payload


def test_unmappable_drift_rejects_items_naming_the_field(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """last_updated removed, current_price renamed beyond recognition: every item rejected."""
    upstream.add_fault("drift", endpoint="coingecko", page=1,
                       rename={"current_price": "quux"}, remove=["last_updated"])
    first = gecko_batches(upstream)[0]
    assert first.quotes == [] and len(first.rejects) == 250 and len(first.raw) == 250
    assert first.rejects[0].reason == (
        "missing field 'current_price', 'last_updated' (schema drift, no confident rename)"
    )
    missing = {e.field for e in first.drift if e.kind == "missing"}
    assert missing == {"current_price", "last_updated"}
    assert any(e.kind == "new" and e.field == "quux" for e in first.drift)
    assert len(first.drift) == 3


def test_malformed_page_is_retried(upstream: ReplayUpstream, redis_db: redis.Redis) -> None:
    """One malformed body, then a good one: the run succeeds."""
    upstream.add_fault("malformed", endpoint="coingecko", page=1, count=1)
    ctx, events = make_ctx(make_settings(upstream), "coingecko")
    assert [len(b.quotes) for b in run(CoinGeckoSource(backoff_base=0.01), ctx)] == [250, 0]
    assert events["http_retries"] == 1


# -- auth -------------------------------------------------------------------------------------


def test_demo_and_pro_key_headers(redis_db: redis.Redis) -> None:
    """Demo header for the public host, pro header for pro-api hosts, none without a key."""
    with ReplayUpstream(require_keys={"coingecko": "k-123"}) as server:
        ctx, _ = make_ctx(make_settings(server, COINGECKO_API_KEY="k-123"), "coingecko")
        assert len(run(CoinGeckoSource(), ctx)) == 2
        assert server.requests()[0]["auth_headers"] == ["x-cg-demo-api-key"]
        no_key, _ = make_ctx(make_settings(server), "coingecko")
        with pytest.raises(UpstreamError) as excinfo:
            run(CoinGeckoSource(), no_key)
        assert excinfo.value.status == 401
    pro = load_settings(
        {"COINGECKO_API_KEY": "k-pro", "COINGECKO_BASE_URL": "https://pro-api.coingecko.com/api/v3"}
    )
    assert auth_headers(pro) == {"x-cg-pro-api-key": "k-pro"}
    assert auth_headers(load_settings({})) == {}
    assert "k-pro" not in repr(pro)


def test_parse_json_used_for_numbers_is_exact() -> None:
    """A quick guard that bodies are parsed with Decimal, not float."""
    assert parse_json("[1.10]")[0].as_tuple() == Decimal("1.10").as_tuple()


def test_fail_after_n_records_cuts_a_page_at_the_limit(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """With 100 records left, page 1 is cut after 100 under the previous page's checkpoint."""
    ctx, _ = make_ctx(make_settings(upstream), "coingecko", run_id=6)
    ctx.max_records = 100
    batches: list[Batch] = []
    for batch in CoinGeckoSource(make_settings(upstream), backoff_base=0.01).batches(ctx):
        batches.append(batch)
        ctx.records_done += batch.record_count  # what the run does after each commit
    # The run raises InjectedFailure after the first batch; without it the page completes.
    assert [(b.record_count, b.checkpoint) for b in batches] == [
        (100, {"run_id": 6, "page": 0, "complete": False}),
        (150, {"run_id": 6, "page": 1, "complete": False}),
        (0, {"run_id": 6, "page": 2, "complete": True}),
    ]
