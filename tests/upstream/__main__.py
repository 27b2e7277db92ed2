"""Run the replay upstream as a process: `python -m tests.upstream --port 0` prints READY <url>."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any, Sequence

from tests.upstream.server import (
    DEFAULT_COINGECKO_TOTAL,
    DEFAULT_COINPAPRIKA_TOTAL,
    FAULT_MODES,
    ReplayUpstream,
)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.upstream",
        description="Replay upstream faking CoinGecko (/api/v3) and CoinPaprika (/v1).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback only)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--coingecko-total", type=int, default=DEFAULT_COINGECKO_TOTAL,
                        help="coins served by /coins/markets (250 = the recorded page only)")
    parser.add_argument("--coinpaprika-total", type=int, default=DEFAULT_COINPAPRIKA_TOTAL,
                        help="tickers served by /tickers")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="JSON",
        help="fault active from start, e.g. "
             "'{\"endpoint\":\"coingecko\",\"mode\":\"429\",\"count\":1,"
             "\"params\":{\"retry_after\":2}}'; modes: " + ", ".join(sorted(FAULT_MODES)),
    )
    parser.add_argument(
        "--coinpaprika-coherent", action="store_true",
        default=os.environ.get("UPSTREAM_COINPAPRIKA_COHERENT", "") not in ("", "0"),
        help="serve CoinPaprika tickers as of the recorded CoinGecko page, with its prices "
             "for the coins both have (also UPSTREAM_COINPAPRIKA_COHERENT=1)")
    parser.add_argument("--require-key", action="append", default=[], metavar="SOURCE=VALUE",
                        help="answer 401 unless the source's auth header equals VALUE")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the server, print READY with its URL, serve until SIGTERM/SIGINT."""
    args = _parse_args(argv)
    faults: list[dict[str, Any]] = [json.loads(f) for f in args.fault]
    # UPSTREAM_FAULTS (a JSON list) lets a harness set faults without touching the command line.
    env_faults = os.environ.get("UPSTREAM_FAULTS", "").strip()
    if env_faults:
        loaded = json.loads(env_faults)
        faults.extend(loaded if isinstance(loaded, list) else [loaded])
    require_keys = dict(item.split("=", 1) for item in args.require_key)
    server = ReplayUpstream(
        args.host, args.port,
        coingecko_total=args.coingecko_total,
        coinpaprika_total=args.coinpaprika_total,
        faults=faults,
        require_keys=require_keys,
        coinpaprika_coherent=args.coinpaprika_coherent,
    ).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"READY {server.url}", flush=True)
    print(f"COINGECKO_BASE_URL={server.coingecko_base_url}", flush=True)
    print(f"COINPAPRIKA_BASE_URL={server.coinpaprika_base_url}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
