"""Replay upstream: a loopback HTTP server faking CoinGecko and CoinPaprika from recorded data."""
from __future__ import annotations

import email.utils
import itertools
import json
import random
import socket
import struct
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

from tests.upstream.coherent import coherent_ticker, coingecko_matches
from tests.upstream.market_chart import coin_scales, market_chart_range

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
COINGECKO_PAGE = FIXTURES / "coingecko" / "coins_markets_usd_page1_per250_2025-02-09.json"
COINPAPRIKA_COINS = FIXTURES / "coinpaprika" / "v1_coins_2022-01-07.json"
COINPAPRIKA_BTC_TICKER = (
    FIXTURES / "coinpaprika" / "v1_tickers_btc-bitcoin_quotes-USD_2022-01-30.json"
)

COINGECKO_PREFIX = "/api/v3"
COINPAPRIKA_PREFIX = "/v1"
CONTROL_PREFIX = "/_control"

DEFAULT_COINGECKO_TOTAL = 250
DEFAULT_COINPAPRIKA_TOTAL = 2000
COINGECKO_PER_PAGE_MAX = 250

FAULT_MODES = frozenset(
    {
        "429", "402", "5xx", "500", "502", "503", "504", "slow", "reset", "truncated",
        "malformed", "drift", "redirect", "400", "401", "403", "404", "status", "hold",
    }
)

# Default shape changes per upstream when a drift fault names none.
DEFAULT_DRIFT: dict[str, dict[str, Any]] = {
    "coingecko": {
        "rename": {"current_price": "price"},
        "retype": {"market_cap": "string"},
        "remove": ["last_updated"],
    },
    "coinpaprika": {
        "rename": {"quotes.USD.price": "quotes.USD.price_usd"},
        "retype": {"quotes.USD.market_cap": "string"},
        "remove": ["last_updated"],
    },
}

CLOUDFLARE_429_HTML = (
    "<!DOCTYPE html>\n<html lang=\"en-US\">\n<head><title>Just a moment...</title></head>\n"
    "<body><h1>Error 1015</h1><h2>You are being rate limited</h2>"
    "<p>The owner of this website (api.coingecko.com) has banned you temporarily from "
    "accessing this website.</p><div class=\"cf-footer\">Cloudflare Ray ID: 90f5aa621f77f7a9"
    "</div></body>\n</html>\n"
)
CLOUDFLARE_5XX_HTML = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    "</body>\r\n</html>\r\n"
)


class RawNumber(str):
    """A JSON number kept as its exact source text, so re-serializing changes no digit."""


def decode_json(text: str) -> Any:
    """Parse JSON keeping every number as a RawNumber (its exact text)."""
    return json.loads(text, parse_float=RawNumber, parse_int=RawNumber)


def encode_json(value: Any) -> str:
    """Serialize compactly like CoinGecko/CoinPaprika do; RawNumbers are written verbatim."""
    if isinstance(value, RawNumber):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(
            json.dumps(k, ensure_ascii=False) + ":" + encode_json(v) for k, v in value.items()
        ) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def split_array(text: str) -> list[str]:
    """The exact text of every item of a top-level JSON array."""
    decoder = json.JSONDecoder()
    items: list[str] = []
    pos = text.index("[") + 1
    length = len(text)
    while True:
        while pos < length and text[pos] in " \t\r\n":
            pos += 1
        if text[pos] == "]":
            return items
        _, end = decoder.raw_decode(text, pos)
        items.append(text[pos:end])
        pos = end
        while pos < length and text[pos] in " \t\r\n":
            pos += 1
        if text[pos] == ",":
            pos += 1


@lru_cache(maxsize=1)
def recorded_coingecko_items() -> tuple[str, ...]:
    """The 250 items of the recorded 2025-02-09 markets page, byte for byte."""
    return tuple(split_array(COINGECKO_PAGE.read_text(encoding="utf-8")))


@lru_cache(maxsize=1)
def recorded_chart_scales() -> dict[str, float]:
    """Coin id -> price ratio to Bitcoin on the recorded page (market_chart/range values)."""
    return coin_scales(recorded_coingecko_items())


@lru_cache(maxsize=1)
def recorded_coinpaprika_coins() -> bytes:
    """The recorded /v1/coins body."""
    return COINPAPRIKA_COINS.read_bytes()


def build_coingecko_items(total: int = DEFAULT_COINGECKO_TOTAL) -> list[str]:
    """`total` market items: the recorded 250 unchanged, then copies with distinct ids."""
    base = recorded_coingecko_items()
    items: list[str] = []
    for index in range(total):
        copy, position = divmod(index, len(base))
        if copy == 0:
            items.append(base[position])
            continue
        item = decode_json(base[position])
        suffix = copy + 1
        item["id"] = f"{item['id']}-p{suffix}"
        item["name"] = f"{item['name']} (copy {suffix})"
        if item.get("market_cap_rank") is not None:
            rank = int(item["market_cap_rank"]) + copy * len(base)
            item["market_cap_rank"] = RawNumber(str(rank))
        items.append(encode_json(item))
    return items


def _ticker(coin: Mapping[str, Any]) -> dict[str, Any]:
    """A synthetic but realistic ticker for `coin`, the same on every call (seeded by its id)."""
    rng = random.Random(f"coinpaprika:{coin['id']}")
    rank = int(coin["rank"])
    market_cap = int(7.2e11 * rank ** -1.6 * rng.uniform(0.8, 1.2))
    circulating = int(10 ** rng.uniform(6.5, 11))
    # Small-cap coins with huge supplies get prices like 3.7e-05: exponent form, as upstream.
    price = float(f"{market_cap / circulating:.12g}")
    total = circulating + (int(circulating * rng.uniform(0, 0.5)) if rng.random() < 0.5 else 0)
    # About 40% of real coins are uncapped, which CoinPaprika reports as max_supply 0.
    max_supply = 0 if rng.random() < 0.4 else total + int(total * rng.uniform(0, 1))
    circulating_out: Any = circulating
    total_out: Any = total
    if rank % 211 == 0:
        # Coins with unknown supply show 0 supply and 0 market cap upstream.
        circulating_out, market_cap = 0, 0
    if rank % 397 == 0:
        total_out = ""  # "missing values may be empty strings" (SPEC, Sources)
    ath = float(f"{price * rng.uniform(1, 20):.12g}")
    return {
        "id": coin["id"],
        "name": coin["name"],
        "symbol": coin["symbol"],
        "rank": rank,
        "circulating_supply": circulating_out,
        "total_supply": total_out,
        "max_supply": max_supply,
        "beta_value": round(rng.uniform(0.3, 1.8), 6),
        "first_data_at": f"{rng.randint(2013, 2021)}-{rng.randint(1, 12):02d}-"
        f"{rng.randint(1, 28):02d}T00:00:00Z",
        "last_updated": f"2022-01-30T18:{rng.randint(19, 23):02d}:{rng.randint(0, 59):02d}Z",
        "quotes": {
            "USD": {
                "price": price,
                "volume_24h": round(market_cap * rng.uniform(0.001, 0.4), 1),
                "volume_24h_change_24h": round(rng.uniform(-60, 60), 2),
                "market_cap": market_cap,
                "market_cap_change_24h": round(rng.uniform(-15, 15), 2),
                **{
                    f"percent_change_{window}": round(rng.uniform(-spread, spread), 2)
                    for window, spread in (
                        ("15m", 1), ("30m", 2), ("1h", 3), ("6h", 6), ("12h", 9),
                        ("24h", 15), ("7d", 30), ("30d", 60), ("1y", 300),
                    )
                },
                "ath_price": ath,
                "ath_date": f"2021-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
                f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
                "percent_from_price_ath": round((price / ath - 1) * 100, 2),
            }
        },
    }


@lru_cache(maxsize=4)
def build_coinpaprika_tickers(total: int = DEFAULT_COINPAPRIKA_TOTAL,
                              coherent: bool = False) -> tuple[str, ...]:
    """`total` tickers of the first active coins by rank.

    By default btc-bitcoin is the recorded 2022 ticker and the rest synthetic 2022 tickers.
    `coherent` serves every ticker as of the recorded 2025 CoinGecko page instead, with
    CoinGecko's numbers for the coins both have (a demo then shows BTC agreeing).
    """
    coins = json.loads(recorded_coinpaprika_coins())
    active = sorted(
        (c for c in coins if c.get("is_active") and int(c.get("rank") or 0) > 0),
        key=lambda c: (int(c["rank"]), c["id"]),
    )[:total]
    recorded_btc = COINPAPRIKA_BTC_TICKER.read_text(encoding="utf-8").strip()
    gecko = [json.loads(text) for text in recorded_coingecko_items()] if coherent else []
    matches = coingecko_matches(active, gecko)
    items = []
    for coin in active:
        if coherent:
            ticker = coherent_ticker(_ticker(coin), matches.get(coin["id"]))
            items.append(json.dumps(ticker, ensure_ascii=False, separators=(",", ":")))
        elif coin["id"] == "btc-bitcoin":
            items.append(recorded_btc)
        else:
            items.append(json.dumps(_ticker(coin), ensure_ascii=False, separators=(",", ":")))
    return tuple(items)


def _get_path(obj: dict[str, Any], dotted: str) -> tuple[dict[str, Any] | None, str]:
    """The dict holding the last segment of `dotted`, and that segment."""
    parts = dotted.split(".")
    node: Any = obj
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None, parts[-1]
    return (node if isinstance(node, dict) else None), parts[-1]


def apply_drift(item_text: str, params: Mapping[str, Any]) -> str:
    """Rename, retype and remove fields of one item (dotted paths reach nested objects)."""
    item = decode_json(item_text)
    if not isinstance(item, dict):
        return item_text
    for old, new in dict(params.get("rename") or {}).items():
        parent, key = _get_path(item, old)
        new_key = new.split(".")[-1]
        if parent is not None and key in parent:
            # Rebuild in order so the renamed key keeps its position, like a real rename would.
            rebuilt = {(new_key if k == key else k): v for k, v in parent.items()}
            parent.clear()
            parent.update(rebuilt)
    for path, kind in dict(params.get("retype") or {}).items():
        parent, key = _get_path(item, path)
        if parent is None or key not in parent or parent[key] is None:
            continue
        value = parent[key]
        if kind == "string":
            parent[key] = str(value)
        elif kind == "number":
            parent[key] = RawNumber(str(value))
        elif kind == "bool":
            parent[key] = bool(value)
        elif kind == "object":
            parent[key] = {"value": value}
    for path in list(params.get("remove") or []):
        parent, key = _get_path(item, path)
        if parent is not None:
            parent.pop(key, None)
    for path, value in dict(params.get("add") or {}).items():
        parent, key = _get_path(item, path)
        if parent is not None:
            parent[key] = value
    return encode_json(item)


def _shift_timestamp(text: str, seconds: float) -> str:
    """`text` (ISO 8601, Z) moved by `seconds`, written with the same fraction length."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00")) + timedelta(seconds=seconds)
    parsed = parsed.astimezone(timezone.utc)
    stamp = parsed.strftime("%Y-%m-%dT%H:%M:%S")
    if "." in text:
        digits = len(text.split(".", 1)[1].rstrip("Z"))
        stamp += "." + f"{parsed.microsecond:06d}"[:digits].ljust(digits, "0")
    return stamp + "Z"


def _advance_item(text: str, seconds: float, price_factor: Decimal | None, price_path: str) -> str:
    """One item with `last_updated` moved forward (and optionally its price scaled)."""
    item = decode_json(text)
    if not isinstance(item, dict) or not isinstance(item.get("last_updated"), str):
        return text
    item["last_updated"] = _shift_timestamp(item["last_updated"], seconds)
    if price_factor is not None:
        parent, key = _get_path(item, price_path)
        if parent is not None and parent.get(key) is not None:
            parent[key] = RawNumber(str(Decimal(str(parent[key])) * price_factor))
    return encode_json(item)


@dataclass
class Fault:
    """One injected failure: which requests it hits, how, and how many times more."""

    id: int
    mode: str
    endpoint: str = "*"
    remaining: int | None = None
    page: int | None = None
    path: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    # Query parameters a request must carry (all of them, equal values) for the fault to hit:
    # one backfill chunk is one coin's path plus its own `from`.
    query: dict[str, str] | None = None
    # A hold fault: set once released (or when the server stops); the held requests wait on it.
    released: threading.Event = field(default_factory=threading.Event, repr=False,
                                      compare=False)

    def matches(self, endpoint: str, path: str, page: int | None,
                query: Mapping[str, str] | None = None) -> bool:
        """Whether this fault applies to a request to `endpoint`/`path` (markets `page`)."""
        if self.endpoint not in ("*", endpoint):
            return False
        if self.page is not None and page != self.page:
            return False
        if self.query and any((query or {}).get(k) != v for k, v in self.query.items()):
            return False
        return self.path is None or path.startswith(self.path)

    def as_dict(self) -> dict[str, Any]:
        """The fault as JSON-able data (for the control API)."""
        return {
            "id": self.id, "mode": self.mode, "endpoint": self.endpoint,
            "count": self.remaining, "page": self.page, "path": self.path, "params": self.params,
            "query": self.query,
        }


def fault_from_spec(fault_id: int, spec: Mapping[str, Any]) -> Fault:
    """Validate a fault given as the control API's JSON (or a CLI flag)."""
    mode = str(spec.get("mode", ""))
    if mode not in FAULT_MODES:
        raise ValueError(f"unknown fault mode {mode!r}; known: {', '.join(sorted(FAULT_MODES))}")
    endpoint = str(spec.get("endpoint", "*"))
    if endpoint not in ("*", "coingecko", "coinpaprika"):
        raise ValueError(f"unknown endpoint {endpoint!r}")
    count = spec.get("count")
    params = dict(spec.get("params") or {})
    page = spec.get("page", params.pop("page", None))
    query = spec.get("query")
    if query is not None and not isinstance(query, Mapping):
        raise ValueError("query must be an object of parameter names to values")
    return Fault(
        id=fault_id,
        mode=mode,
        endpoint=endpoint,
        remaining=None if count is None else int(count),
        page=None if page is None else int(page),
        path=spec.get("path"),
        params=params,
        query={str(k): str(v) for k, v in query.items()} if query else None,
    )


class UpstreamState:
    """Data served, faults pending and the request log, shared by all handler threads."""

    def __init__(
        self,
        coingecko_total: int = DEFAULT_COINGECKO_TOTAL,
        coinpaprika_total: int = DEFAULT_COINPAPRIKA_TOTAL,
        faults: Iterable[Mapping[str, Any]] = (),
        require_keys: Mapping[str, str] | None = None,
        coinpaprika_coherent: bool = False,
    ) -> None:
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self.coingecko_total = coingecko_total
        self.coinpaprika_total = coinpaprika_total
        # Tickers as of the recorded CoinGecko page, with its numbers (build_coinpaprika_tickers).
        self.coinpaprika_coherent = coinpaprika_coherent
        # Rank shift while paging: page N>1 starts this many items early, so the last items
        # of a page show up again at the top of the next (CoinGecko's cache does this).
        self.coingecko_page_overlap = 0
        self.require_keys: dict[str, str] = dict(require_keys or {})
        self.faults: list[Fault] = []
        # Every hold fault by id, used up or not: its held requests wait until it is released.
        self.holds: dict[int, Fault] = {}
        self.log: list[dict[str, Any]] = []
        self.coingecko_items: list[str] = []
        self.coinpaprika_items: list[str] = []
        self._load_data()
        for spec in faults:
            self.add_fault(spec)

    def _load_data(self) -> None:
        self.coingecko_items = build_coingecko_items(self.coingecko_total)
        self.coinpaprika_items = list(
            build_coinpaprika_tickers(self.coinpaprika_total, self.coinpaprika_coherent))

    def add_fault(self, spec: Mapping[str, Any]) -> Fault:
        """Queue a fault; faults apply first-added first."""
        with self.lock:
            fault = fault_from_spec(next(self._ids), spec)
            self.faults.append(fault)
            if fault.mode == "hold":
                self.holds[fault.id] = fault
            return fault

    def take_fault(self, endpoint: str, path: str, page: int | None,
                   query: Mapping[str, str] | None = None) -> Fault | None:
        """The fault hitting this request, if any, spending one of its uses."""
        with self.lock:
            for fault in self.faults:
                if fault.matches(endpoint, path, page, query):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    def reset(self, config: Mapping[str, Any] | None = None) -> None:
        """Back to freshly started: original data, no faults, empty log (config may change)."""
        self.release()  # no handler thread is left waiting on a hold that no longer exists
        with self.lock:
            self._configure(config or {})
            self.faults.clear()
            self.holds.clear()
            self.log.clear()
            self._load_data()

    def clear_faults(self) -> None:
        """Drop every pending fault; requests held now are released, not left hanging."""
        self.release()
        with self.lock:
            self.faults.clear()

    def release(self, hold_id: int | None = None) -> int:
        """Let the requests held by one hold fault (all of them: None) go on, answered as
        usual, and hold no more; returns how many were waiting."""
        with self.lock:
            holds = [self.holds[hold_id]] if hold_id is not None else list(self.holds.values())
            for fault in holds:
                if fault in self.faults:
                    self.faults.remove(fault)
                fault.released.set()
            ids = {f.id for f in holds}
            return sum(1 for e in self.log if e.get("hold_id") in ids
                       and e.get("hold") == "waiting")

    def held(self, hold_id: int) -> list[dict[str, Any]]:
        """Copies of the log entries of the requests this hold fault stopped, arrival order;
        `hold` says whether each is still "waiting" or was "released"."""
        if hold_id not in self.holds:
            raise KeyError(f"no hold fault {hold_id}")
        with self.lock:
            return [dict(e) for e in self.log if e.get("hold_id") == hold_id]

    def configure(self, config: Mapping[str, Any]) -> None:
        """Change totals / required keys; rebuilds the data served."""
        with self.lock:
            self._configure(config)
            self._load_data()

    def _configure(self, config: Mapping[str, Any]) -> None:
        if "coingecko_total" in config:
            self.coingecko_total = int(config["coingecko_total"])
        if "coinpaprika_total" in config:
            self.coinpaprika_total = int(config["coinpaprika_total"])
        if "coinpaprika_coherent" in config:
            self.coinpaprika_coherent = bool(config["coinpaprika_coherent"])
        if "coingecko_page_overlap" in config:
            self.coingecko_page_overlap = int(config["coingecko_page_overlap"])
        if "require_keys" in config:
            self.require_keys = dict(config["require_keys"] or {})

    def advance(
        self,
        seconds: float,
        endpoint: str = "*",
        ids: Iterable[str] | None = None,
        first: int | None = None,
        price_factor: str | None = None,
    ) -> int:
        """Move `last_updated` of the chosen coins forward; returns how many changed."""
        wanted = set(ids) if ids is not None else None
        factor = Decimal(price_factor) if price_factor is not None else None
        changed = 0
        with self.lock:
            for name, items, price_path in (
                ("coingecko", self.coingecko_items, "current_price"),
                ("coinpaprika", self.coinpaprika_items, "quotes.USD.price"),
            ):
                if endpoint not in ("*", name):
                    continue
                for index, text in enumerate(items):
                    if first is not None and index >= first:
                        break
                    if wanted is not None and json.loads(text).get("id") not in wanted:
                        continue
                    new_text = _advance_item(text, seconds, factor, price_path)
                    if new_text != text:
                        items[index] = new_text
                        changed += 1
        return changed

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Append a request to the log (the entry is updated in place with its outcome)."""
        with self.lock:
            entry["seq"] = next(self._seq)
            self.log.append(entry)
        return entry

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """A copy of the request log, optionally only one endpoint's requests."""
        with self.lock:
            return [dict(e) for e in self.log if endpoint in (None, e["endpoint"])]


class _Reset(Exception):
    """Raised inside the handler after the connection was torn down on purpose."""


class _Handler(BaseHTTPRequestHandler):
    """Serves one connection; keep-alive like the real APIs behind Cloudflare."""

    protocol_version = "HTTP/1.1"
    server_version = "cloudflare"
    server: "_Server"

    def version_string(self) -> str:
        """The Server header, as the real APIs (behind Cloudflare) send it."""
        return "cloudflare"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the stdlib's per-request stderr line (the control log has everything)."""

    def finish(self) -> None:
        """Tolerate sockets that a fault (or an impatient client) already closed."""
        try:
            super().finish()
        except OSError:
            pass

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def state(self) -> UpstreamState:
        """The server's shared state."""
        return self.server.state

    def _send(
        self,
        status: int,
        body: bytes | str,
        content_type: str = "application/json; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_json(self, status: int, value: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(value), headers=headers)

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw.strip() else {}

    def _rst(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a dying proxy would."""
        self.close_connection = True
        try:
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            self.connection.close()
        except OSError:
            pass
        raise _Reset()

    # -- entry points -----------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        """Route a GET to the control API or a fake upstream."""
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        """HEAD behaves as GET without a body."""
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        """Only the control API accepts POST."""
        self._dispatch()

    def _dispatch(self) -> None:
        started = time.monotonic()
        wall = time.time()
        split = urlsplit(self.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        try:
            if path.startswith(CONTROL_PREFIX):
                self._control(path[len(CONTROL_PREFIX):], query)
                return
            endpoint = (
                "coingecko" if path.startswith(COINGECKO_PREFIX + "/") or path == COINGECKO_PREFIX
                else "coinpaprika" if path.startswith(COINPAPRIKA_PREFIX + "/")
                else "other"
            )
            page = None
            if path == COINGECKO_PREFIX + "/coins/markets":
                try:
                    page = int(query.get("page", "1"))
                except ValueError:
                    page = None
            entry = self.state.record(
                {
                    "mono": started,
                    "wall": wall,
                    "method": self.command,
                    "path": path,
                    "query": split.query,
                    "endpoint": endpoint,
                    "page": page,
                    "status": None,
                    "fault": None,
                    # Header names only: the log must never hold a key's value.
                    "auth_headers": sorted(
                        h.lower() for h in self.headers.keys()
                        if h.lower() in ("x-cg-demo-api-key", "x-cg-pro-api-key", "authorization")
                    ),
                }
            )
            fault = self.state.take_fault(endpoint, path, page, query)
            if fault is not None:
                entry["fault"] = fault.mode
            self._serve(endpoint, path, query, fault, entry)
        except _Reset:
            pass
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its timeout fired during a slow fault).
            self.close_connection = True

    # -- fake upstreams ---------------------------------------------------------------------

    def _error(
        self, endpoint: str, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        if endpoint == "coingecko":
            body: Any = {"status": {"error_code": status, "error_message": message}}
        else:
            body = {"error": message}
        self._send_json(status, body, headers=headers)

    def _serve(
        self,
        endpoint: str,
        path: str,
        query: dict[str, str],
        fault: Fault | None,
        entry: dict[str, Any],
    ) -> None:
        def respond(status: int, body: bytes | str, **kwargs: Any) -> None:
            """Send and record the status in the log entry."""
            entry["status"] = status
            self._send(status, body, **kwargs)

        drift: Mapping[str, Any] | None = None
        if fault is not None:
            params = fault.params
            if fault.mode == "slow":
                # Sleep past the client's timeout, waking early if the server is stopping.
                self.state.stopping.wait(float(params.get("seconds", 5.0)))
            elif fault.mode == "hold":
                # Wait for the test's release (stop() and reset() release too): the request is
                # in flight for as long as the test needs, not for a guessed number of seconds.
                with self.state.lock:
                    entry["hold_id"], entry["hold"] = fault.id, "waiting"
                fault.released.wait()
                with self.state.lock:
                    entry["hold"] = "released"
            elif fault.mode == "drift":
                drift = params or DEFAULT_DRIFT.get(endpoint, {})
            elif fault.mode == "reset" and not params.get("after_bytes"):
                self._rst()
            elif fault.mode not in ("reset", "truncated", "malformed"):
                self._serve_fault(endpoint, path, fault, entry)
                return

        status, body = self._upstream_body(endpoint, path, query, drift)
        headers = {"Cache-Control": "max-age=30, public, must-revalidate, s-maxage=30"}
        if fault is not None and fault.mode == "reset":
            entry["status"] = status
            raw = body.encode("utf-8")
            head = (
                f"HTTP/1.1 {status} OK\r\nContent-Type: application/json; charset=utf-8\r\n"
                f"Content-Length: {len(raw)}\r\n\r\n"
            ).encode("ascii")
            self.wfile.write(head + raw[: int(fault.params["after_bytes"])])
            self._rst()
        if fault is not None and fault.mode == "truncated":
            entry["status"] = status
            raw = body.encode("utf-8")
            cut = max(1, int(len(raw) * float(fault.params.get("fraction", 0.5))))
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            # Promise the whole body, deliver part of it, then close: an IncompleteRead.
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw[:cut])
            self.close_connection = True
            return
        if fault is not None and fault.mode == "malformed" and status == 200:
            bad = fault.params.get("body")
            if bad is None:
                # Same length class as a real body but not JSON: a broken cache entry.
                bad = body.replace('":', '" :: ', 1) if '":' in body else body + "}{"
            respond(200, bad, headers=headers)
            return
        respond(status, body, headers=headers if status == 200 else None)

    def _serve_fault(self, endpoint: str, path: str, fault: Fault, entry: dict[str, Any]) -> None:
        params = fault.params
        mode = fault.mode
        if mode == "429":
            retry_after = params.get("retry_after", 1)
            headers: dict[str, str] = {}
            if retry_after is not None:
                if params.get("retry_after_format") == "date":
                    headers["Retry-After"] = email.utils.formatdate(
                        time.time() + float(retry_after), usegmt=True
                    )
                else:
                    headers["Retry-After"] = str(retry_after)
            entry["status"] = 429
            if params.get("body") == "html":
                self._send(429, CLOUDFLARE_429_HTML, "text/html; charset=UTF-8", headers)
            elif endpoint == "coinpaprika":
                self._send_json(429, {"error": "Too Many Requests"}, headers)
            else:
                self._send_json(
                    429,
                    {"status": {"error_code": 429, "error_message": "You've exceeded the Rate "
                                "Limit. Please visit https://www.coingecko.com/en/api/pricing to "
                                "subscribe to our API plans for higher rate limits."}},
                    headers,
                )
            return
        if mode == "redirect":
            status = int(params.get("status", 302))
            location = params.get("location") or (
                f"http://127.0.0.2:{self.server.server_address[1]}{self.path}"
            )
            entry["status"] = status
            self._send(status, "", "text/html", {"Location": location})
            return
        if mode in ("5xx", "500", "502", "503", "504"):
            status = int(params.get("status", 503 if mode == "5xx" else mode))
            headers = {}
            if params.get("retry_after") is not None:
                headers["Retry-After"] = str(params["retry_after"])
            entry["status"] = status
            reason = self.responses.get(status, ("Error",))[0]
            if status in (502, 504) or params.get("body") == "html":
                self._send(
                    status,
                    CLOUDFLARE_5XX_HTML.format(status=status, reason=reason),
                    "text/html",
                    headers,
                )
            else:
                self._error(endpoint, status, reason, headers)
            return
        if mode == "402":
            entry["status"] = 402
            self._send_json(
                402,
                {"error": params.get(
                    "message", "Your current plan does not allow this request or quota exhausted"
                )},
            )
            return
        if mode == "status":
            status = int(params.get("status", 500))
            entry["status"] = status
            self._send(
                status,
                str(params.get("body", "")),
                str(params.get("content_type", "application/json; charset=utf-8")),
            )
            return
        status = int(mode)  # 400 / 401 / 403 / 404
        entry["status"] = status
        messages = {
            400: "Invalid request parameters",
            401: "Invalid API key or missing API key",
            403: "Forbidden",
            404: "Not found",
        }
        self._error(endpoint, status, str(params.get("message", messages[status])))

    def _check_key(self, endpoint: str) -> bool:
        expected = self.state.require_keys.get(endpoint)
        if not expected:
            return True
        if endpoint == "coingecko":
            sent = self.headers.get("x-cg-demo-api-key") or self.headers.get("x-cg-pro-api-key")
        else:
            sent = self.headers.get("Authorization")
        return sent == expected

    def _upstream_body(
        self,
        endpoint: str,
        path: str,
        query: dict[str, str],
        drift: Mapping[str, Any] | None,
    ) -> tuple[int, str]:
        def array(items: Iterable[str]) -> str:
            """A JSON array of item texts (drifted when a drift fault applies)."""
            texts = [apply_drift(t, drift) for t in items] if drift else list(items)
            return "[" + ",".join(texts) + "]"

        def error(status: int, message: str) -> tuple[int, str]:
            """An error body in the upstream's own format."""
            if endpoint == "coingecko":
                body = {"status": {"error_code": status, "error_message": message}}
                return status, json.dumps(body)
            return status, json.dumps({"error": message})

        if endpoint in ("coingecko", "coinpaprika") and not self._check_key(endpoint):
            return error(401, "Invalid API key or missing API key")
        if endpoint == "coingecko":
            sub = path[len(COINGECKO_PREFIX):]
            if sub == "/ping":
                return 200, '{"gecko_says":"(V3) To the Moon!"}'
            if sub == "/coins/markets":
                currency = query.get("vs_currency")
                if not currency:
                    return 400, '{"error":"Missing parameter vs_currency"}'
                if currency.lower() != "usd":
                    return 400, '{"error":"invalid vs_currency"}'
                try:
                    per_page = int(query.get("per_page", "100"))
                    page = int(query.get("page", "1"))
                except ValueError:
                    return 400, '{"error":"invalid per_page or page"}'
                if not 1 <= per_page <= COINGECKO_PER_PAGE_MAX:
                    return 400, '{"error":"per_page must be between 1 and 250"}'
                if page < 1:
                    return 400, '{"error":"page must be 1 or greater"}'
                with self.state.lock:
                    shift = self.state.coingecko_page_overlap if page > 1 else 0
                    start = max(0, (page - 1) * per_page - shift)
                    items = self.state.coingecko_items[start: start + per_page]
                return 200, array(items)
            if sub.startswith("/coins/") and sub.endswith("/market_chart/range"):
                coin = sub[len("/coins/"):-len("/market_chart/range")]
                return market_chart_range(coin, query, recorded_chart_scales())
            return 404, '{"error":"Incorrect path. Please check https://www.coingecko.com/api/"}'
        if endpoint == "coinpaprika":
            sub = path[len(COINPAPRIKA_PREFIX):]
            if sub == "/tickers":
                quotes = query.get("quotes", "USD")
                if quotes.upper() != "USD":
                    return 400, '{"error":"invalid quotes"}'
                with self.state.lock:
                    items = list(self.state.coinpaprika_items)
                return 200, array(items)
            if sub.startswith("/tickers/"):
                wanted = sub[len("/tickers/"):]
                with self.state.lock:
                    found = [
                        t for t in self.state.coinpaprika_items if json.loads(t)["id"] == wanted
                    ]
                if not found:
                    return 404, '{"error":"id not found"}'
                return 200, apply_drift(found[0], drift) if drift else found[0]
            if sub == "/coins":
                return 200, recorded_coinpaprika_coins().decode("utf-8")
            return 404, '{"error":"not found"}'
        return 404, '{"error":"not found"}'

    # -- control API ------------------------------------------------------------------------

    def _control(self, sub: str, query: dict[str, str]) -> None:
        state = self.state
        try:
            if self.command == "GET" and sub == "/log":
                self._send_json(200, {"requests": state.requests(query.get("endpoint"))})
            elif self.command == "GET" and sub == "/faults":
                with state.lock:
                    faults = [f.as_dict() for f in state.faults]
                self._send_json(200, {"faults": faults})
            elif self.command == "POST" and sub == "/fault":
                spec = self._read_body()
                specs = spec if isinstance(spec, list) else [spec]
                ids = [state.add_fault(s).id for s in specs]
                self._send_json(200, {"ids": ids})
            elif self.command == "GET" and sub == "/held":
                self._send_json(200, {"held": state.held(int(query["id"]))})
            elif self.command == "POST" and sub == "/release":
                body = self._read_body()
                hold_id = body.get("id")
                released = state.release(None if hold_id is None else int(hold_id))
                self._send_json(200, {"released": released})
            elif self.command == "POST" and sub == "/clear_faults":
                self._read_body()
                state.clear_faults()
                self._send_json(200, {"ok": True})
            elif self.command == "POST" and sub == "/reset":
                state.reset(self._read_body())
                self._send_json(200, {"ok": True})
            elif self.command == "POST" and sub == "/config":
                state.configure(self._read_body())
                self._send_json(200, {"ok": True})
            elif self.command == "POST" and sub == "/advance":
                body = self._read_body()
                changed = state.advance(
                    float(body.get("seconds", 60)),
                    endpoint=str(body.get("endpoint", "*")),
                    ids=body.get("ids"),
                    first=body.get("first"),
                    price_factor=body.get("price_factor"),
                )
                self._send_json(200, {"advanced": changed})
            else:
                self._send_json(404, {"error": f"unknown control call {self.command} {sub}"})
        except (ValueError, TypeError, KeyError) as exc:
            self._send_json(400, {"error": str(exc)})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: UpstreamState) -> None:
        self.state = state
        super().__init__(address, _Handler)


class ReplayUpstream:
    """The replay server, run in a background thread: start(), use .url, stop()."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        coingecko_total: int = DEFAULT_COINGECKO_TOTAL,
        coinpaprika_total: int = DEFAULT_COINPAPRIKA_TOTAL,
        faults: Iterable[Mapping[str, Any]] = (),
        require_keys: Mapping[str, str] | None = None,
        coinpaprika_coherent: bool = False,
    ) -> None:
        self.state = UpstreamState(coingecko_total, coinpaprika_total, faults, require_keys,
                                   coinpaprika_coherent)
        self._initial = {
            "coinpaprika_coherent": coinpaprika_coherent,
            "coingecko_page_overlap": 0,
            "coingecko_total": coingecko_total,
            "coinpaprika_total": coinpaprika_total,
            "require_keys": dict(require_keys or {}),
        }
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ReplayUpstream":
        """Bind and serve in a daemon thread; returns self."""
        self.state.stopping.clear()
        self._server = _Server(self._address, self.state)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="replay-upstream", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (slow and held requests wake up)."""
        self.state.stopping.set()
        self.state.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def serve_forever(self) -> None:
        """Serve in the calling thread until stop() is called from elsewhere."""
        self._server = _Server(self._address, self.state)
        self._server.serve_forever(poll_interval=0.05)

    def __enter__(self) -> "ReplayUpstream":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port."""
        if self._server is None:
            raise RuntimeError("replay upstream is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """http://host:port of the running server."""
        if self._server is None:
            raise RuntimeError("replay upstream is not running")
        return f"http://{self._address[0]}:{self.port}"

    @property
    def coingecko_base_url(self) -> str:
        """Value for COINGECKO_BASE_URL."""
        return self.url + COINGECKO_PREFIX

    @property
    def coinpaprika_base_url(self) -> str:
        """Value for COINPAPRIKA_BASE_URL."""
        return self.url + COINPAPRIKA_PREFIX

    # In-process equivalents of the control API.

    def add_fault(
        self,
        mode: str,
        endpoint: str = "*",
        count: int | None = None,
        page: int | None = None,
        path: str | None = None,
        query: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> int:
        """Inject a fault (see FAULT_MODES); returns its id."""
        return self.state.add_fault(
            {"mode": mode, "endpoint": endpoint, "count": count, "page": page, "path": path,
             "query": query, "params": params}
        ).id

    def hold(self, endpoint: str = "*", path: str | None = None,
             query: Mapping[str, Any] | None = None, count: int | None = None) -> int:
        """Hold the matching requests (the first `count` of them; None: all) unanswered until
        release(); returns the hold's id for wait_held() and release()."""
        return self.add_fault("hold", endpoint=endpoint, count=count, path=path, query=query)

    def wait_held(self, hold_id: int, count: int = 1, timeout: float = 60
                  ) -> list[dict[str, Any]]:
        """Wait until `count` requests are waiting on the hold; their log entries."""
        return _wait_held(lambda: self.state.held(hold_id), hold_id, count, timeout)

    def held(self, hold_id: int) -> list[dict[str, Any]]:
        """Log entries of the requests the hold stopped (`hold`: "waiting" or "released")."""
        return self.state.held(hold_id)

    def release(self, hold_id: int | None = None) -> int:
        """Answer the held requests as usual and hold no more (every hold: None); returns how
        many were waiting."""
        return self.state.release(hold_id)

    def clear_faults(self) -> None:
        """Drop every pending fault (held requests are released)."""
        self.state.clear_faults()

    def reset(self, **config: Any) -> None:
        """Back to the startup data with no faults and an empty log."""
        self.state.reset({**self._initial, **config})

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """The request log: seq, mono, wall, path, query, endpoint, page, status, fault."""
        return self.state.requests(endpoint)

    def advance(
        self,
        seconds: float = 60,
        endpoint: str = "*",
        ids: Iterable[str] | None = None,
        first: int | None = None,
        price_factor: str | None = None,
    ) -> int:
        """Move `last_updated` of some/all coins forward; returns how many changed."""
        return self.state.advance(seconds, endpoint, ids, first, price_factor)


class UpstreamControl:
    """Client of the control API, for a replay server running in another process."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, sub: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.url + CONTROL_PREFIX + sub, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())

    def add_fault(
        self,
        mode: str,
        endpoint: str = "*",
        count: int | None = None,
        page: int | None = None,
        path: str | None = None,
        query: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> int:
        """Inject a fault; returns its id."""
        spec = {"mode": mode, "endpoint": endpoint, "count": count, "page": page, "path": path,
                "query": dict(query) if query else None, "params": params}
        return int(self._call("POST", "/fault", spec)["ids"][0])

    def hold(self, endpoint: str = "*", path: str | None = None,
             query: Mapping[str, Any] | None = None, count: int | None = None) -> int:
        """Hold the matching requests until release(); returns the hold's id."""
        return self.add_fault("hold", endpoint=endpoint, count=count, path=path, query=query)

    def held(self, hold_id: int) -> list[dict[str, Any]]:
        """Log entries of the requests the hold stopped."""
        return list(self._call("GET", f"/held?id={int(hold_id)}")["held"])

    def wait_held(self, hold_id: int, count: int = 1, timeout: float = 60
                  ) -> list[dict[str, Any]]:
        """Wait until `count` requests are waiting on the hold; their log entries."""
        return _wait_held(lambda: self.held(hold_id), hold_id, count, timeout)

    def release(self, hold_id: int | None = None) -> int:
        """Answer the held requests as usual and hold no more; returns how many were waiting."""
        body = {} if hold_id is None else {"id": int(hold_id)}
        return int(self._call("POST", "/release", body)["released"])

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        self._call("POST", "/clear_faults", {})

    def reset(self, **config: Any) -> None:
        """Back to the startup data with no faults and an empty log."""
        self._call("POST", "/reset", config)

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """The request log."""
        suffix = f"?endpoint={endpoint}" if endpoint else ""
        return list(self._call("GET", "/log" + suffix)["requests"])

    def advance(self, seconds: float = 60, endpoint: str = "*", **kwargs: Any) -> int:
        """Move `last_updated` of some/all coins forward; returns how many changed."""
        body = {"seconds": seconds, "endpoint": endpoint, **kwargs}
        return int(self._call("POST", "/advance", body)["advanced"])


def _wait_held(fetch: Callable[[], list[dict[str, Any]]], hold_id: int, count: int,
               timeout: float) -> list[dict[str, Any]]:
    """Poll a hold's entries until `count` of them are waiting (TimeoutError past `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = [e for e in fetch() if e.get("hold") == "waiting"]
        if len(waiting) >= count:
            return waiting
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(waiting)} of {count} requests held by hold {hold_id} "
                               f"after {timeout}s")
        time.sleep(0.02)


def max_requests_in_window(times: Iterable[float], window: float) -> int:
    """The most request times falling in any half-open interval of `window` seconds."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


__all__: list[str] = [
    "ReplayUpstream", "UpstreamControl", "UpstreamState", "Fault", "FAULT_MODES",
    "build_coingecko_items", "build_coinpaprika_tickers", "recorded_coingecko_items",
    "split_array", "decode_json", "encode_json", "apply_drift", "max_requests_in_window",
]
