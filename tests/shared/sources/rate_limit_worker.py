"""A separate process running a CoinGecko fetch, for the cluster-wide quota test."""
from __future__ import annotations

import json
import sys
import time

from shared.config import load_settings
from shared.sources.base import RunContext
from shared.sources.coingecko import CoinGeckoSource


def main(start_at: float) -> int:
    """Wait for the common start instant, fetch every page, print how many pages came back."""
    settings = load_settings()
    counts: dict[str, float] = {}

    def on_event(name: str, amount: float) -> None:
        """Count the run's events."""
        counts[name] = counts.get(name, 0) + amount

    ctx = RunContext(run_id=1, source="coingecko", settings=settings, on_event=on_event)
    time.sleep(max(0.0, start_at - time.time()))
    pages = sum(1 for _ in CoinGeckoSource(backoff_base=0.01).batches(ctx))
    print(json.dumps({"pages": pages, "events": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1])))
