"""CoinGecko `/coins/markets`: a paged snapshot of every coin, one Batch per page."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

from shared.config import Settings
from shared.errors import SourceError
from shared.batch.types import Batch, ParsedQuote
from shared.sources.api_source import ApiSource
from shared.sources.base import RunContext
from shared.sources.batching import Entry, build_batch, cut_index, records_budget
from shared.sources.drift import DriftEvent, DriftReport, FieldSpec, detect_drift
from shared.sources.exact_json import JsonItem
from shared.sources.items import parse_market_item, to_entry

logger = logging.getLogger("shared.sources.coingecko")

SOURCE = "coingecko"
CHECKPOINT_KEY = "markets"
PER_PAGE = 250  # CoinGecko's maximum; fewer pages means fewer calls against the quota

FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("id", "string", required=True),
    FieldSpec("symbol", "string", required=True),
    FieldSpec("name", "string"),
    FieldSpec("current_price", "number"),
    FieldSpec("market_cap", "number"),
    FieldSpec("market_cap_rank", "number"),
    FieldSpec("total_volume", "number"),
    FieldSpec("high_24h", "number"),
    FieldSpec("low_24h", "number"),
    FieldSpec("circulating_supply", "number"),
    FieldSpec("total_supply", "number"),
    FieldSpec("max_supply", "number"),
    FieldSpec("last_updated", "datetime", required=True),
)

# Fields CoinGecko sends that we store only in the raw layer (not drift).
KNOWN_FIELDS: frozenset[str] = frozenset(
    {
        "image", "fully_diluted_valuation", "price_change_24h", "price_change_percentage_24h",
        "market_cap_change_24h", "market_cap_change_percentage_24h", "ath",
        "ath_change_percentage", "ath_date", "atl", "atl_change_percentage", "atl_date", "roi",
        "sparkline_in_7d",
        *(
            f"price_change_percentage_{w}_in_currency"
            for w in ("1h", "24h", "7d", "14d", "30d", "200d", "1y")
        ),
    }
)

# ParsedQuote attribute -> CoinGecko field.
NUMBER_FIELDS: tuple[tuple[str, str], ...] = (
    ("price_usd", "current_price"),
    ("market_cap_usd", "market_cap"),
    ("volume_24h_usd", "total_volume"),
    ("circulating_supply", "circulating_supply"),
    ("total_supply", "total_supply"),
    ("max_supply", "max_supply"),
    ("high_usd", "high_24h"),
    ("low_usd", "low_24h"),
)


def auth_headers(settings: Settings) -> dict[str, str]:
    """The API-key header for the configured plan: pro hosts take the pro header."""
    key = settings.coingecko_api_key
    if not key:
        return {}
    if "pro-api" in settings.coingecko_base_url:
        return {"x-cg-pro-api-key": key}
    return {"x-cg-demo-api-key": key}


def parse_item(
    item: JsonItem, location: str, report: DriftReport
) -> tuple[ParsedQuote | None, str | None, str]:
    """One market item as (quote, None, source_key) or (None, reject reason, source_key)."""
    return parse_market_item(SOURCE, item, location, report, NUMBER_FIELDS, "market_cap_rank")


def parse_entries(
    page: int, items: list[JsonItem], seen: set[str] | None = None
) -> tuple[list[Entry], list[DriftEvent]]:
    """Parse one fetched page item by item, with the page's drift events."""
    report = detect_drift(SOURCE, f"page {page}", [i.value for i in items], FIELDS, KNOWN_FIELDS)
    seen = set() if seen is None else seen
    entries: list[Entry] = []
    for index, item in enumerate(items, start=1):
        where = f"page {page} item {index}"
        entries.append(to_entry(SOURCE, item, where, parse_item(item, where, report), seen))
    return entries, report.events


@dataclass
class CoinGeckoSource(ApiSource):
    """Pages through /coins/markets until an empty or short page; resumes within a run."""

    per_page: int = PER_PAGE
    max_pages: int = 1000
    name: str = SOURCE

    def first_page(self, ctx: RunContext) -> int | None:
        """Where this run starts: after the last committed page of the same run, else page 1."""
        saved = ctx.checkpoints.get(CHECKPOINT_KEY) or {}
        if saved.get("run_id") != ctx.run_id:
            return 1
        if saved.get("complete"):
            return None  # this run already finished (a redelivered task): nothing to do
        return int(saved.get("page", 0)) + 1

    def batches(self, ctx: RunContext) -> Iterator[Batch]:
        """Yield one Batch per page; the empty/short last page carries complete=True."""
        start = self.first_page(ctx)
        if start is None:
            logger.info("coingecko: run %s already complete; nothing to fetch", ctx.run_id)
            return
        settings = self.run_settings(ctx)
        client = self.client(SOURCE, settings, ctx, settings.coingecko_rate,
                             auth_headers(settings))
        url = f"{settings.coingecko_base_url}/coins/markets"
        seen: set[str] = set()
        with client:
            for page in range(start, start + self.max_pages):
                items = client.get_json_array(
                    url,
                    {
                        "vs_currency": "usd",
                        "order": "market_cap_desc",
                        "per_page": self.per_page,
                        "page": page,
                    },
                )
                complete = len(items) < self.per_page
                entries, events = parse_entries(page, items, seen)
                done = {"run_id": ctx.run_id, "page": page, "complete": complete}
                cut = cut_index(entries, 0, len(entries), records_budget(ctx))
                if cut < len(entries):
                    # FAIL_AFTER_N_RECORDS falls inside this page: commit its first part under
                    # the previous page's checkpoint, so a resume refetches the whole page.
                    before = {"run_id": ctx.run_id, "page": page - 1, "complete": False}
                    batch = build_batch(CHECKPOINT_KEY, before, entries[:cut])
                    batch.drift, events = events, []
                    yield batch
                    entries = entries[cut:]
                batch = build_batch(CHECKPOINT_KEY, done, entries)
                batch.drift = events
                yield batch
                if complete:
                    return
        raise SourceError(
            f"coingecko: no short page after {self.max_pages} pages; refusing to page forever"
        )
