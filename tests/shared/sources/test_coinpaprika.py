"""CoinPaprikaSource: one array in batches of 500, exact values, resume, errors, auth, drift."""
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
from shared.sources.coinpaprika import CoinPaprikaSource, auth_headers
from shared.sources.http_errors import UpstreamUnavailable
from tests.shared.sources.conftest import make_ctx, make_settings
from tests.upstream import ReplayUpstream

BTC_TICKER = Path(__file__).resolve().parents[2] / "fixtures" / "coinpaprika" / (
    "v1_tickers_btc-bitcoin_quotes-USD_2022-01-30.json"
)


def run(
    upstream: ReplayUpstream,
    run_id: int = 1,
    checkpoints: dict[str, dict[str, Any]] | None = None,
    **env: str,
) -> list[Batch]:
    """All batches of one CoinPaprika run against `upstream`."""
    ctx, _ = make_ctx(make_settings(upstream, **env), "coinpaprika", run_id, checkpoints)
    return list(CoinPaprikaSource(backoff_base=0.01).batches(ctx))


def test_full_run_in_batches_of_500(upstream: ReplayUpstream, redis_db: redis.Redis) -> None:
    """2,000 tickers: four batches of 500 in id order; the last one is complete."""
    batches = run(upstream, run_id=3)
    assert [len(b.quotes) for b in batches] == [500] * 4
    assert [b.checkpoint["offset"] for b in batches] == [500, 1000, 1500, 2000]
    assert [b.checkpoint["complete"] for b in batches] == [False, False, False, True]
    assert all(b.checkpoint["run_id"] == 3 and b.checkpoint_key == "tickers" for b in batches)
    ids = [q.source_asset_id for b in batches for q in b.quotes]
    assert ids == sorted(ids) and len(set(ids)) == 2000
    assert batches[0].checkpoint["last_id"] == ids[499]
    assert sum(len(b.rejects) for b in batches) == 0
    assert len(upstream.requests()) == 1  # one array, fetched once


def test_btc_quote_equals_the_recorded_ticker(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """Values are the exact upstream text; the raw payload is the recorded ticker byte for byte."""
    batches = run(upstream)
    text = BTC_TICKER.read_text(encoding="utf-8").strip()
    raw = next(r for b in batches for r in b.raw if r.source_key == "btc-bitcoin")
    assert raw.payload == text and raw.hash == content_hash("coinpaprika", text)
    btc = next(q for b in batches for q in b.quotes if q.source_asset_id == "btc-bitcoin")
    assert (btc.symbol, btc.name, btc.rank) == ("BTC", "Bitcoin", 1)
    assert btc.observed_at == datetime(2022, 1, 30, 18, 23, 8, tzinfo=timezone.utc)
    assert btc.price_usd is not None and btc.volume_24h_usd is not None
    assert btc.price_usd.as_tuple() == Decimal("38054.559249568").as_tuple()
    assert btc.volume_24h_usd.as_tuple() == Decimal("16010948942.9").as_tuple()
    assert btc.market_cap_usd == Decimal("720916758464")
    assert (btc.circulating_supply, btc.total_supply, btc.max_supply) == (
        Decimal("18944294"), Decimal("18944294"), Decimal("21000000"),
    )
    assert btc.raw_hash == raw.hash


def test_uncapped_and_empty_values_are_none(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """max_supply 0 means uncapped and "" means missing: both are stored as None."""
    served = {t["id"]: t for t in json.loads(
        "[" + ",".join(upstream.state.coinpaprika_items) + "]"
    )}
    quotes = {q.source_asset_id: q for b in run(upstream) for q in b.quotes}
    uncapped = [i for i, t in served.items() if t["max_supply"] == 0]
    blank = [i for i, t in served.items() if t["total_supply"] == ""]
    assert uncapped and blank
    assert all(quotes[i].max_supply is None for i in uncapped)
    assert all(quotes[i].total_supply is None for i in blank)
    for coin_id, ticker in served.items():
        assert quotes[coin_id].price_usd == Decimal(str(ticker["quotes"]["USD"]["price"]))


def test_resume_skips_the_committed_batches(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """Same run with two batches committed: refetch, then only the remaining 1,000 coins."""
    full = run(upstream, run_id=4)
    saved = {"tickers": full[1].checkpoint}
    upstream.reset()
    resumed = run(upstream, run_id=4, checkpoints=saved)
    assert [b.checkpoint["offset"] for b in resumed] == [1500, 2000]
    assert [q.source_asset_id for b in resumed for q in b.quotes] == [
        q.source_asset_id for b in full[2:] for q in b.quotes
    ]
    # An offset-only checkpoint (no last_id) works too.
    upstream.reset()
    offset_only = {"tickers": {"run_id": 4, "offset": 1500, "complete": False}}
    by_offset = run(upstream, run_id=4, checkpoints=offset_only)
    assert [b.checkpoint["offset"] for b in by_offset] == [2000]
    # A finished run does nothing; another run starts from scratch.
    upstream.reset()
    assert run(upstream, run_id=4, checkpoints={"tickers": full[-1].checkpoint}) == []
    assert upstream.requests() == []
    assert len(run(upstream, run_id=5, checkpoints={"tickers": full[-1].checkpoint})) == 4


def test_empty_array_still_writes_a_complete_checkpoint(redis_db: redis.Redis) -> None:
    """No tickers: one empty batch that marks the run complete."""
    with ReplayUpstream(coinpaprika_total=0) as server:
        batches = run(server, run_id=2)
    assert len(batches) == 1 and batches[0].quotes == []
    assert batches[0].checkpoint == {"run_id": 2, "offset": 0, "last_id": None, "complete": True}


def test_402_is_a_plan_error_not_retried(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """402 raises UpstreamError with the upstream's message; no batch, one request."""
    upstream.add_fault("402", endpoint="coinpaprika", message="Monthly quota exhausted")
    with pytest.raises(UpstreamError) as excinfo:
        run(upstream)
    assert excinfo.value.status == 402
    assert str(excinfo.value) == (
        "coinpaprika: HTTP 402 (plan or quota) for /v1/tickers?quotes=USD: Monthly quota exhausted"
    )
    assert len(upstream.requests()) == 1


def test_429_then_success(upstream: ReplayUpstream, redis_db: redis.Redis) -> None:
    """A 429 with Retry-After 1 is waited out, then the run completes."""
    upstream.add_fault("429", endpoint="coinpaprika", count=1, retry_after=1)
    assert len(run(upstream)) == 4
    first, second = upstream.requests()
    assert first["status"] == 429 and second["mono"] - first["mono"] >= 1.0


def test_reset_every_time_fails_with_no_batch(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """Connection resets outlasting the retries: UpstreamUnavailable, nothing yielded."""
    upstream.add_fault("reset", endpoint="coinpaprika")
    with pytest.raises(UpstreamUnavailable, match="connection broken"):
        run(upstream, HTTP_MAX_RETRIES="1")
    assert len(upstream.requests()) == 2


def test_authorization_header_with_and_without_scheme(redis_db: redis.Redis) -> None:
    """`Authorization: <key>` by default, `Authorization: <scheme> <key>` when configured."""
    with ReplayUpstream(require_keys={"coinpaprika": "Bearer pk-1"}) as server:
        assert len(run(server, COINPAPRIKA_API_KEY="pk-1", COINPAPRIKA_AUTH_SCHEME="Bearer")) == 4
        assert server.requests()[0]["auth_headers"] == ["authorization"]
        with pytest.raises(UpstreamError) as excinfo:
            run(server, COINPAPRIKA_API_KEY="pk-1")
        assert excinfo.value.status == 401 and "pk-1" not in str(excinfo.value)
    assert auth_headers(load_settings({"COINPAPRIKA_API_KEY": "pk-2"})) == {"Authorization": "pk-2"}
    assert auth_headers(load_settings({})) == {}


def test_nested_rename_is_mapped(upstream: ReplayUpstream, redis_db: redis.Redis) -> None:
    """quotes.USD.price -> quotes.USD.price_usd is an obvious rename: mapped, drift counted once."""
    upstream.add_fault(
        "drift", endpoint="coinpaprika", rename={"quotes.USD.price": "quotes.USD.price_usd"}
    )
    ctx, _ = make_ctx(make_settings(upstream), "coinpaprika")
    source = CoinPaprikaSource(backoff_base=0.01)
    batches = list(source.batches(ctx))
    assert sum(len(b.rejects) for b in batches) == 0
    btc = next(q for b in batches for q in b.quotes if q.source_asset_id == "btc-bitcoin")
    assert btc.price_usd == Decimal("38054.559249568")
    assert [len(b.drift) for b in batches] == [1, 0, 0, 0]
    event = batches[0].drift[0]
    assert (event.kind, event.field, event.observed, event.mapped) == (
        "renamed", "quotes.USD.price", "quotes.USD.price_usd", True,
    )


def test_missing_last_updated_rejects_every_ticker(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """The default drift (last_updated removed) cannot be mapped: all rejected, raw kept."""
    upstream.add_fault("drift", endpoint="coinpaprika")
    batches = run(upstream)
    rejects = [r for b in batches for r in b.rejects]
    assert len(rejects) == 2000 and sum(len(b.raw) for b in batches) == 2000
    assert all("'last_updated'" in r.reason for r in rejects)
    assert rejects[0].location.startswith("tickers item ")


def test_fail_after_n_records_cuts_a_batch_at_the_limit(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """With 700 records allowed the batches are 500 then 200, so the limit is a boundary."""
    ctx, _ = make_ctx(make_settings(upstream), "coinpaprika")
    ctx.max_records = 700
    source = CoinPaprikaSource(make_settings(upstream), backoff_base=0.01)
    sizes = []
    for batch in source.batches(ctx):
        sizes.append((batch.record_count, batch.checkpoint["offset"]))
        ctx.records_done += batch.record_count
        if ctx.records_done >= ctx.max_records:
            break  # the run raises InjectedFailure here
    assert sizes == [(500, 500), (200, 700)]
