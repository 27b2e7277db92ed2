"""Plain data types that sources produce and the loader consumes (no I/O here)."""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


def content_hash(*parts: str) -> bytes:
    """SHA-256 over the parts, separated so that ('ab','c') and ('a','bc') differ."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x1f")
    return digest.digest()


@dataclass(frozen=True, slots=True)
class RawItem:
    """One record as received: `payload` is the exact JSON item text or CSV line."""

    source_key: str
    payload: str
    hash: bytes


@dataclass(frozen=True, slots=True)
class ParsedQuote:
    """One normalized observation, still keyed by the source's own asset id."""

    source_asset_id: str
    symbol: str
    name: str | None
    observed_at: datetime
    raw_hash: bytes
    price_usd: Decimal | None = None
    market_cap_usd: Decimal | None = None
    volume_24h_usd: Decimal | None = None
    circulating_supply: Decimal | None = None
    total_supply: Decimal | None = None
    max_supply: Decimal | None = None
    rank: int | None = None
    open_usd: Decimal | None = None
    high_usd: Decimal | None = None
    low_usd: Decimal | None = None
    close_usd: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that could not be used: where it was, why, and the record itself."""

    location: str
    reason: str
    payload: str


@dataclass(frozen=True, slots=True)
class QuoteBlock:
    """Quotes of one source asset id as PostgreSQL COPY text, values already checked.

    A source that reads text (CSV) renders the lines itself and lets PostgreSQL parse the
    numbers and timestamps, instead of building a ParsedQuote per row. Each line holds
    shared.batch.copy_format.QUOTE_COPY_COLUMNS, tab-separated and escaped, and starts with
    ASSET_SLOT in place of the asset id: as one `text`, or as `lines` without their ends (the
    flag cells and newline, which the loader adds: shared.batch.copy_format.block_copy_text).
    """

    source_asset_id: str
    symbol: str
    name: str | None
    text: str
    rows: int
    # observed_at of each row as ISO 8601 UTC text (datetime.isoformat()), for the quotes' keys.
    stamps: list[str] = field(default_factory=list)
    # Each row's price as the line's text, for the jump check (shared.quality.flags parses
    # them with one map(float)); empty: not checked.
    prices: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LineBlock:
    """A line source's raw lines in one batch, in file order: stored as one raw_line_blocks row.

    Kept compact (several batches wait in memory at once): `payload` is the lines joined by
    newlines, `hashes` their 32-byte content hashes end to end (quotes.raw_hash holds the
    first 8 of each), `numbers` their line numbers.
    """

    file_key: str
    numbers: array[int]
    payload: str
    hashes: bytes


@dataclass(frozen=True, slots=True)
class PreparedQuotes:
    """A batch's quotes ready to write: COPY data with asset ids filled in, and their key spans.

    `spans` maps each asset id to the first and last observed_at (ISO 8601 UTC text, which
    sorts as time does) the batch writes for it: two batches written at once must not share a
    quote key, and disjoint spans prove they do not (see shared.ingest.pipeline).
    """

    data: bytes
    spans: dict[int, tuple[str, str]]
    # Assets two other sources quote: their outliers are judged after the batch publishes.
    outlier_assets: list[int] = field(default_factory=list)
    # What the batch writes for its flags besides their cells in `data`: anomalies, flag set
    # counts, publish qualities (shared.quality.flags.FlagWrites).
    writes: Any = None
    # The assets whose stored quotes the batch's keys may meet (None: unknown, every asset).
    probe: list[int] | None = None

    @property
    def asset_ids(self) -> set[int]:
        """The assets the batch writes quotes for."""
        return set(self.spans)

    def may_share_key(self, other: PreparedQuotes) -> bool:
        """Whether the two batches might write the same (asset, observed_at)."""
        for asset_id, (first, last) in self.spans.items():
            span = other.spans.get(asset_id)
            if span is not None and first <= span[1] and span[0] <= last:
                return True
        return False


@dataclass(slots=True)
class Batch:
    """A unit of atomic progress: these rows and this checkpoint commit together."""

    checkpoint_key: str
    checkpoint: dict[str, Any]
    raw: list[RawItem] = field(default_factory=list)
    quotes: list[ParsedQuote] = field(default_factory=list)
    rejects: list[Rejected] = field(default_factory=list)
    # Counters a source wants added to its run (http_requests, http_retries, ...).
    stats: dict[str, float] = field(default_factory=dict)
    # Schema-drift events (shared.sources.drift.DriftEvent) seen while reading this batch.
    drift: list[Any] = field(default_factory=list)
    # A line source's raw lines (instead of `raw`) and its quotes as ready-made COPY text.
    raw_lines: LineBlock | None = None
    quote_blocks: list[QuoteBlock] = field(default_factory=list)
    # Set by shared.ingest.batch_writer.BatchWriter.prepare when identities were resolved ahead of
    # the write.
    prepared: PreparedQuotes | None = None

    @property
    def raw_count(self) -> int:
        """Raw records in this batch: API records and lines."""
        return len(self.raw) + (len(self.raw_lines.numbers) if self.raw_lines else 0)

    @property
    def quote_count(self) -> int:
        """Usable records in this batch, as objects and as COPY text."""
        return len(self.quotes) + sum(block.rows for block in self.quote_blocks)

    @property
    def record_count(self) -> int:
        """Records this batch covers: usable plus rejected."""
        return self.quote_count + len(self.rejects)
