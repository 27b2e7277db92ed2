"""CoinPaprika `/tickers?quotes=USD`: all coins in one array, committed in batches of 500."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Iterator

from shared.config import Settings
from shared.batch.types import Batch, ParsedQuote
from shared.sources.api_source import ApiSource
from shared.sources.base import RunContext
from shared.sources.batching import Entry, build_batch, cut_index, records_budget
from shared.sources.drift import DriftReport, FieldSpec, detect_drift
from shared.sources.exact_json import JsonItem
from shared.sources.items import parse_market_item, to_entry

logger = logging.getLogger("shared.sources.coinpaprika")

SOURCE = "coinpaprika"
CHECKPOINT_KEY = "tickers"
BATCH_SIZE = 500

FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("id", "string", required=True),
    FieldSpec("symbol", "string", required=True),
    FieldSpec("name", "string"),
    FieldSpec("rank", "number"),
    FieldSpec("circulating_supply", "number"),
    FieldSpec("total_supply", "number"),
    FieldSpec("max_supply", "number"),
    FieldSpec("last_updated", "datetime", required=True),
    FieldSpec("quotes.USD.price", "number"),
    FieldSpec("quotes.USD.volume_24h", "number"),
    FieldSpec("quotes.USD.market_cap", "number"),
)

# Sent by CoinPaprika, kept only in the raw layer.
KNOWN_FIELDS: frozenset[str] = frozenset(
    {
        "beta_value", "first_data_at",
        *(
            f"quotes.USD.{name}"
            for name in (
                "volume_24h_change_24h", "market_cap_change_24h", "percent_change_15m",
                "percent_change_30m", "percent_change_1h", "percent_change_6h",
                "percent_change_12h", "percent_change_24h", "percent_change_7d",
                "percent_change_30d", "percent_change_1y", "ath_price", "ath_date",
                "percent_from_price_ath",
            )
        ),
    }
)

NUMBER_FIELDS: tuple[tuple[str, str], ...] = (
    ("price_usd", "quotes.USD.price"),
    ("market_cap_usd", "quotes.USD.market_cap"),
    ("volume_24h_usd", "quotes.USD.volume_24h"),
    ("circulating_supply", "circulating_supply"),
    ("total_supply", "total_supply"),
    ("max_supply", "max_supply"),
)


def auth_headers(settings: Settings) -> dict[str, str]:
    """`Authorization: [scheme ]key` when a key is configured (pro plans)."""
    key = settings.coinpaprika_api_key
    if not key:
        return {}
    scheme = settings.coinpaprika_auth_scheme.strip()
    return {"Authorization": f"{scheme} {key}" if scheme else key}


def parse_ticker(
    item: JsonItem, location: str, report: DriftReport
) -> tuple[ParsedQuote | None, str | None, str]:
    """One ticker as (quote, None, source_key) or (None, reject reason, source_key)."""
    quote, reason, key = parse_market_item(SOURCE, item, location, report, NUMBER_FIELDS, "rank")
    if quote is None:
        return quote, reason, key
    # CoinPaprika reports uncapped coins with max_supply 0 ("no cap", not zero) and unranked
    # coins with rank 0.
    return replace(
        quote,
        max_supply=quote.max_supply if quote.max_supply else None,
        rank=quote.rank if quote.rank else None,
    ), None, key


def _sort_key(item: JsonItem, index: int) -> tuple[int, str, int]:
    # Sorted by id, the position of a coin does not depend on today's ranks, so a resumed run
    # that refetches the array skips exactly the coins already committed.
    coin_id = item.value.get("id") if isinstance(item.value, dict) else None
    if isinstance(coin_id, str) and coin_id:
        return (0, coin_id, index)
    return (1, "", index)


@dataclass
class CoinPaprikaSource(ApiSource):
    """Fetches the ticker array once and commits it in id-ordered batches of 500."""

    batch_size: int = BATCH_SIZE
    name: str = SOURCE

    def resume_point(self, ctx: RunContext) -> dict[str, Any] | None:
        """The committed position of this run, {} to start fresh, None when already complete."""
        saved = ctx.checkpoints.get(CHECKPOINT_KEY) or {}
        if saved.get("run_id") != ctx.run_id:
            return {}
        if saved.get("complete"):
            return None
        return saved

    def batches(self, ctx: RunContext) -> Iterator[Batch]:
        """Yield the tickers in batches; the last carries complete=True (even when empty)."""
        resume = self.resume_point(ctx)
        if resume is None:
            logger.info("coinpaprika: run %s already complete; nothing to fetch", ctx.run_id)
            return
        settings = self.run_settings(ctx)
        with self.client(SOURCE, settings, ctx, settings.coinpaprika_rate,
                         auth_headers(settings)) as client:
            items = client.get_json_array(
                f"{settings.coinpaprika_base_url}/tickers", {"quotes": "USD"}
            )
        keys = sorted(_sort_key(item, i) for i, item in enumerate(items))
        ordered = [items[k[2]] for k in keys]
        offset = min(int(resume.get("offset") or 0), len(ordered))
        cursor_id: str | None = resume.get("last_id")
        start = offset
        if cursor_id:
            last = (0, str(cursor_id))
            start = next((i for i, k in enumerate(keys) if k[:2] > last), len(ordered))
            valid = sum(1 for k in keys if k[0] == 0)
            if start >= valid:
                # Past the coins with ids, only the (id-less) tail is left: trust the offset.
                start = max(start, offset)
        report = detect_drift(SOURCE, "tickers", [i.value for i in items], FIELDS, KNOWN_FIELDS)
        entries = self._entries(ordered, keys, start, report)
        first = True
        position = start
        while first or position < len(ordered):
            end = start + cut_index(
                entries, position - start, self.batch_size, records_budget(ctx)
            )
            cursor_id = next(
                (k[1] for k in reversed(keys[position:end]) if k[0] == 0), cursor_id
            )
            checkpoint = {
                "run_id": ctx.run_id,
                "offset": end,
                "last_id": cursor_id,
                "complete": end >= len(ordered),
            }
            batch = build_batch(CHECKPOINT_KEY, checkpoint, entries[position - start:end - start])
            # Drift is a property of the one response: recorded once, with the first batch.
            batch.drift = list(report.events) if first else []
            yield batch
            first = False
            position = end

    @staticmethod
    def _entries(
        ordered: list[JsonItem], keys: list[tuple[int, str, int]], start: int, report: DriftReport
    ) -> list[Entry]:
        """Parse the items from `start` on (id order), deduplicated by id."""
        seen: set[str] = set()
        entries: list[Entry] = []
        for sort_key, item in zip(keys[start:], ordered[start:]):
            # Name the item by its position in the upstream array, where people look.
            where = f"tickers item {sort_key[2] + 1}"
            entries.append(to_entry(SOURCE, item, where, parse_ticker(item, where, report),
                                    seen))
        return entries
