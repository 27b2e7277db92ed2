"""Cutting parsed API items into Batches, honouring FAIL_AFTER_N_RECORDS batch boundaries."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from shared.batch.types import Batch, ParsedQuote, RawItem, Rejected
from shared.sources.base import RunContext


@dataclass(frozen=True, slots=True)
class Entry:
    """One fetched item: always raw, plus a quote, a reject, or neither (a duplicate)."""

    raw: RawItem
    quote: ParsedQuote | None = None
    reject: Rejected | None = None

    @property
    def records(self) -> int:
        """How many records this item adds to Batch.record_count."""
        return 1 if self.quote is not None or self.reject is not None else 0


def records_budget(ctx: RunContext) -> int | None:
    """Records this run may still take before FAIL_AFTER_N_RECORDS fires (None: no limit)."""
    if ctx.max_records is None:
        return None
    # At least one record so that a run past its limit still moves and then fails.
    return max(1, ctx.max_records - ctx.records_done)


def cut_index(entries: Sequence[Entry], start: int, max_items: int, budget: int | None) -> int:
    """End of the next slice from `start`: at most `max_items` items, `budget` records."""
    end = min(len(entries), start + max_items)
    if budget is None:
        return end
    taken = 0
    for index in range(start, end):
        taken += entries[index].records
        if taken >= budget:
            return index + 1
    return end


def build_batch(
    checkpoint_key: str,
    checkpoint: dict[str, Any],
    entries: Sequence[Entry],
) -> Batch:
    """A Batch of `entries` (raw for all, quotes and rejects where they have one)."""
    batch = Batch(checkpoint_key=checkpoint_key, checkpoint=checkpoint)
    for entry in entries:
        batch.raw.append(entry.raw)
        if entry.quote is not None:
            batch.quotes.append(entry.quote)
        if entry.reject is not None:
            batch.rejects.append(entry.reject)
    duplicates = sum(1 for e in entries if e.records == 0)
    if duplicates:
        batch.stats["duplicates"] = float(duplicates)
    return batch
