"""HTTP plumbing: retries per fault mode, Retry-After, the cluster-wide quota, exact numbers."""
from __future__ import annotations

import email.utils
import json
import logging
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.errors import UpstreamError
from shared.sources.exact_json import (
    BodyError,
    ShapeError,
    parse_json,
    parse_json_array,
    to_datetime,
    to_decimal,
    to_int,
)
from shared.sources.http import HttpClient, parse_retry_after, redact
from shared.sources.http_errors import RateLimited, UpstreamUnavailable
from shared.sources.rate_limit import RedisRateLimiter
from tests.shared.sources.conftest import REDIS_URL, Events, make_settings
from tests.upstream import ReplayUpstream, max_requests_in_window

ROOT = Path(__file__).resolve().parents[3]
PING = "/api/v3/ping"
# A one-coin page: the smallest request the clients really make.
ONE_COIN = {"vs_currency": "usd", "per_page": 1, "page": 1}
KEY = "cg-secret-key-0123456789"


def client_for(
    upstream: ReplayUpstream, events: Events | None = None, source: str = "coingecko", **env: str
) -> HttpClient:
    """An HttpClient against the replay upstream with fast backoff."""
    settings = make_settings(upstream, **env)
    rate = settings.coingecko_rate if source == "coingecko" else settings.coinpaprika_rate
    return HttpClient(source, settings, rate=rate, on_event=events, backoff_base=0.01)


def markets(upstream: ReplayUpstream) -> str:
    """The CoinGecko markets URL of the replay upstream."""
    return upstream.coingecko_base_url + "/coins/markets"


# -- exact JSON -------------------------------------------------------------------------------


def test_parse_json_array_keeps_item_text_and_number_text() -> None:
    """Item text is the exact substring; numbers are the Decimal of their text."""
    text = ' [ {"a":1.50,"b":-6.0e-05,"c":null} ,\n{"a":2} ]\n'
    items = parse_json_array(text)
    assert [i.text for i in items] == ['{"a":1.50,"b":-6.0e-05,"c":null}', '{"a":2}']
    first = items[0].value
    assert first["a"].as_tuple() == Decimal("1.50").as_tuple()
    assert first["b"].as_tuple() == Decimal("-6.0e-05").as_tuple()
    assert first["c"] is None
    assert parse_json_array("[]") == []


@pytest.mark.parametrize("text", ["[1,]", "[1 2]", '[{"a":1}', "", "<html>", "[1]x"])
def test_parse_json_array_rejects_broken_json(text: str) -> None:
    """Cut, corrupted or trailing-garbage bodies are BodyErrors."""
    with pytest.raises(BodyError):
        parse_json_array(text)


def test_parse_json_array_rejects_an_object_as_a_shape_error() -> None:
    """Valid JSON of the wrong shape is told apart from broken JSON (it is not retried)."""
    with pytest.raises(ShapeError):
        parse_json_array('{"error": "nope"}')
    assert parse_json('{"x": 1e+3}')["x"] == Decimal("1e+3")


def test_to_decimal_to_int_to_datetime() -> None:
    """null and "" are None, numeric strings parse, junk is an error, times are UTC."""
    assert to_decimal(None) is None and to_decimal("") is None and to_decimal(" ") is None
    assert to_decimal("1.5e-7") == Decimal("1.5e-7")
    assert to_decimal(Decimal("NaN")) is None
    assert to_decimal("NaN") is None and to_decimal("-") is None  # shared "missing" markers
    assert parse_json('{"x": NaN}')["x"] is None
    for bad in (True, "abc", "1,5", [1]):
        with pytest.raises(ValueError):
            to_decimal(bad)
    assert to_int(Decimal("42")) == 42 and to_int(None) is None
    with pytest.raises(ValueError):
        to_int(Decimal("1.5"))
    stamp = to_datetime("2025-02-09T17:44:04.143Z")
    assert stamp is not None and stamp.utcoffset() is not None and stamp.microsecond == 143000
    naive = to_datetime("2025-02-09T17:44:04")
    assert naive is not None and naive.tzinfo is not None  # naive -> UTC
    assert to_datetime(None) is None
    with pytest.raises(ValueError):
        to_datetime("yesterday")


def test_parse_retry_after_and_redact() -> None:
    """Retry-After as seconds or an HTTP date; garbage is ignored; secrets are scrubbed."""
    assert parse_retry_after("30") == 30
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 10, usegmt=True)
    assert 8 <= (parse_retry_after(date, now=now) or 0) <= 10
    assert parse_retry_after(email.utils.formatdate(now - 100, usegmt=True)) == 0
    assert redact(f"bad key {KEY}!", [KEY, ""]) == "bad key [redacted]!"


# -- retries per fault mode -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "params"),
    [
        ("5xx", {}),
        ("500", {}),
        ("502", {}),
        ("503", {"retry_after": 0}),
        ("slow", {"seconds": 4}),
        ("reset", {}),
        ("reset", {"after_bytes": 100}),
        ("truncated", {"fraction": 0.5}),
        ("malformed", {}),
        ("429", {"retry_after": 0}),
        ("429", {"retry_after": 0, "body": "html"}),
    ],
)
def test_transient_faults_are_retried_to_success(
    upstream: ReplayUpstream, redis_db: redis.Redis, mode: str, params: dict[str, Any]
) -> None:
    """Two failures in a row, then the full page: the client returns it and counts 2 retries."""
    upstream.add_fault(mode, endpoint="coingecko", count=2, **params)
    events = Events()
    with client_for(upstream, events) as client:
        items = client.get_json_array(
            upstream.coingecko_base_url + "/coins/markets",
            {"vs_currency": "usd", "per_page": 250, "page": 1},
        )
    assert len(items) == 250
    assert events["http_requests"] == 3
    assert events["http_retries"] == 2
    statuses = [e["fault"] for e in upstream.requests()]
    assert statuses == [mode, mode, None]


@pytest.mark.parametrize(
    ("mode", "params", "expected"),
    [
        ("503", {}, "HTTP 503"),
        ("502", {}, "HTTP 502 (HTML error page)"),
        ("slow", {"seconds": 4}, "no answer within 1.5s"),
        ("reset", {}, "connection broken"),
        ("truncated", {}, "connection broken"),
        ("malformed", {}, "invalid JSON"),
    ],
)
def test_transient_faults_that_persist_give_up_after_max_retries(
    upstream: ReplayUpstream, redis_db: redis.Redis, mode: str, params: dict[str, Any],
    expected: str,
) -> None:
    """Bounded retries: 1 + HTTP_MAX_RETRIES attempts, then UpstreamUnavailable saying why."""
    upstream.add_fault(mode, endpoint="coingecko", **params)
    events = Events()
    with client_for(upstream, events, HTTP_MAX_RETRIES="2") as client:
        with pytest.raises(UpstreamUnavailable) as excinfo:
            client.get_json_array(markets(upstream), ONE_COIN)
    message = str(excinfo.value)
    assert expected in message and "after 3 attempt(s)" in message
    assert message.startswith(
        "coingecko: giving up on /api/v3/coins/markets?vs_currency=usd&per_page=1&page=1")
    assert len(upstream.requests()) == 3
    assert events["http_retries"] == 2


@pytest.mark.parametrize(
    ("mode", "status", "text"),
    [
        ("402", 402, "HTTP 402 (plan or quota)"),
        ("401", 401, "Invalid API key"),
        ("400", 400, "Invalid request parameters"),
        ("403", 403, "HTTP 403"),
        ("404", 404, "HTTP 404"),
    ],
)
def test_permanent_errors_are_not_retried(
    upstream: ReplayUpstream, redis_db: redis.Redis, mode: str, status: int, text: str
) -> None:
    """402 and other 4xx fail at once with the status and the upstream's message."""
    upstream.add_fault(mode, endpoint="coinpaprika")
    with client_for(upstream, source="coinpaprika") as client:
        with pytest.raises(UpstreamError) as excinfo:
            client.get_json_array(upstream.coinpaprika_base_url + "/tickers", {"quotes": "USD"})
    assert not isinstance(excinfo.value, UpstreamUnavailable)
    assert excinfo.value.status == status
    assert text in str(excinfo.value)
    assert "/v1/tickers?quotes=USD" in str(excinfo.value)
    assert len(upstream.requests()) == 1


def test_object_body_where_an_array_belongs_is_not_retried(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """A 200 with {"error": ...} instead of the array is a permanent error naming the message."""
    upstream.add_fault("status", endpoint="coingecko", status=200, body='{"error":"plan ended"}')
    with client_for(upstream) as client, pytest.raises(UpstreamError) as excinfo:
        client.get_json_array(upstream.coingecko_base_url + "/coins/markets")
    assert "unexpected body shape" in str(excinfo.value) and "plan ended" in str(excinfo.value)
    assert len(upstream.requests()) == 1


def test_redirects_are_never_followed(upstream: ReplayUpstream, redis_db: redis.Redis) -> None:
    """A 302 to another host is an error naming the status; the other host sees nothing."""
    with ReplayUpstream(host="127.0.0.2") as elsewhere:
        upstream.add_fault("redirect", endpoint="coingecko", location=elsewhere.url + PING)
        with client_for(upstream) as client, pytest.raises(UpstreamError) as excinfo:
            client.get_json_array(markets(upstream), ONE_COIN)
        assert elsewhere.requests() == []
    assert excinfo.value.status == 302
    assert "HTTP 302 redirect" in str(excinfo.value) and "not followed" in str(excinfo.value)
    assert len(upstream.requests()) == 1


# -- Retry-After and the shared block ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["seconds", "date"])
def test_429_retry_after_is_honoured(
    upstream: ReplayUpstream, redis_db: redis.Redis, fmt: str
) -> None:
    """After a 429 with Retry-After S, the next request to that source comes >= S later."""
    upstream.add_fault("429", endpoint="coingecko", count=1, retry_after=2,
                       retry_after_format=fmt)
    events = Events()
    with client_for(upstream, events) as client:
        assert client.get_json_array(markets(upstream), ONE_COIN)
    first, second = upstream.requests("coingecko")
    assert first["status"] == 429 and second["status"] == 200
    # An HTTP date has 1 s resolution: it can mean up to 1 s less than the delta asked for.
    minimum = 2.0 if fmt == "seconds" else 1.0
    assert second["mono"] - first["mono"] >= minimum
    assert events["rate_limit_waits"] == 1
    assert events["rate_limit_wait_seconds"] >= minimum - 0.1
    assert events["http_retries"] == 1


def test_429_blocks_every_client_of_that_source(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """The block lives in Redis: a second client (another worker) also waits it out."""
    upstream.add_fault("429", endpoint="coingecko", count=1, retry_after=2)
    with client_for(upstream, HTTP_MAX_RETRIES="0") as worker_a:
        with pytest.raises(UpstreamUnavailable, match="HTTP 429"):
            worker_a.get_json_array(markets(upstream), ONE_COIN)
    assert redis_db.get("ratelimit:blocked_until:coingecko") is not None
    events = Events()
    with client_for(upstream, events) as worker_b:
        worker_b.get_json_array(markets(upstream), ONE_COIN)
        # Another source is not blocked.
        paprika = client_for(upstream, source="coinpaprika")
        started = time.monotonic()
        paprika.get_json_array(upstream.coinpaprika_base_url + "/tickers")
        assert time.monotonic() - started < 1.0
    rejected, served = upstream.requests("coingecko")
    assert served["mono"] - rejected["mono"] >= 2.0
    assert events["rate_limit_waits"] == 1


def test_retry_after_longer_than_we_wait_raises_rate_limited(
    upstream: ReplayUpstream, redis_db: redis.Redis
) -> None:
    """A Retry-After beyond HTTP_BACKOFF_MAX_SECONDS is not slept through: RateLimited."""
    upstream.add_fault("429", endpoint="coingecko", retry_after=120)
    with client_for(upstream) as client, pytest.raises(RateLimited) as excinfo:
        client.get_json_array(markets(upstream), ONE_COIN)
    assert excinfo.value.retry_after == 120
    assert "exceeds the 3s we wait" in str(excinfo.value)
    with client_for(upstream) as other, pytest.raises(RateLimited):
        other.get_json_array(markets(upstream), ONE_COIN)
    assert len(upstream.requests()) == 1  # the second client did not even ask


# -- the quota --------------------------------------------------------------------------------


def test_limiter_waits_for_a_free_slot(upstream: ReplayUpstream, redis_db: redis.Redis) -> None:
    """With 2 per second, the third request waits about a second and the wait is reported."""
    events = Events()
    with client_for(upstream, events, COINGECKO_RATE_LIMIT="2") as client:
        for _ in range(3):
            client.get_json_array(markets(upstream), ONE_COIN)
    times = [e["mono"] for e in upstream.requests()]
    assert max_requests_in_window(times, 1.0 - 0.25) <= 2  # allowance: see the next test
    assert events["rate_limit_waits"] == 1
    assert 0.5 <= events["rate_limit_wait_seconds"] <= 2.0


@pytest.mark.slow
@pytest.mark.processes
def test_quota_holds_across_processes(redis_db: redis.Redis) -> None:
    """4 processes fetching at once never exceed N requests in any window of P seconds."""
    quota, period, per_process = 4, 2, 3
    with ReplayUpstream(coingecko_total=500) as server:
        env = dict(
            os.environ,
            REDIS_URL=REDIS_URL,
            COINGECKO_BASE_URL=server.coingecko_base_url,
            COINGECKO_RATE_LIMIT=str(quota),
            COINGECKO_RATE_PERIOD_SECONDS=str(period),
            HTTP_TIMEOUT_SECONDS="5",
            HTTP_BACKOFF_MAX_SECONDS="10",
        )
        start_at = time.time() + 1.0  # every process starts its run at the same instant
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.shared.sources.rate_limit_worker", str(start_at)],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for _ in range(4)
        ]
        outputs = [w.communicate(timeout=60) for w in workers]
        log = server.requests("coingecko")
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
        assert json.loads(out)["pages"] == per_process
    assert len(log) == 4 * per_process
    assert all(e["status"] == 200 for e in log)
    times = [e["mono"] for e in log]
    # The limiter bounds when slots are granted; a request reaches the server a little after
    # its grant (longer on a loaded 2-core box), so windows are measured 0.25 s short.
    assert max_requests_in_window(times, period - 0.25) <= quota, sorted(times)
    # 12 requests at 4 per 2 s cannot take less than two full periods.
    assert max(times) - min(times) >= 2 * period - 0.1


def test_limiter_block_only_ever_extends(redis_db: redis.Redis) -> None:
    """A short Retry-After never shortens a longer block another worker recorded."""
    from shared.config import RateLimit

    limiter = RedisRateLimiter(REDIS_URL, "coingecko", RateLimit(10, 1))
    limiter.block(30)
    limiter.block(1)
    assert 28 < limiter.blocked_for() <= 30
    limiter.clear()
    assert limiter.blocked_for() == 0


# -- secrets ----------------------------------------------------------------------------------


def test_keys_never_appear_in_errors_or_logs(
    upstream: ReplayUpstream, redis_db: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Even when the upstream echoes the key back, messages and logs show [redacted]."""
    caplog.set_level(logging.DEBUG)
    echo = json.dumps({"error": f"invalid api key {KEY}"})
    upstream.add_fault("status", endpoint="coingecko", count=1, status=503, body=echo)
    upstream.add_fault("status", endpoint="coingecko", count=1, status=401, body=echo)
    settings = make_settings(upstream, COINGECKO_API_KEY=KEY)
    client = HttpClient(
        "coingecko", settings, rate=settings.coingecko_rate,
        headers={"x-cg-demo-api-key": KEY}, backoff_base=0.01,
    )
    with client, pytest.raises(UpstreamError) as excinfo:
        client.get_json_array(markets(upstream), ONE_COIN)
    assert excinfo.value.status == 401
    assert KEY not in str(excinfo.value) and "[redacted]" in str(excinfo.value)
    assert caplog.records, "the retry should have been logged"
    for record in caplog.records:
        assert KEY not in record.getMessage()
    assert [e["auth_headers"] for e in upstream.requests()] == [["x-cg-demo-api-key"]] * 2
