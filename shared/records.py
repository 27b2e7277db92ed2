"""Plain data types that sources produce and the loader consumes (no I/O here)."""
from __future__ import annotations

import hashlib
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

    @property
    def record_count(self) -> int:
        """Records this batch covers: usable plus rejected."""
        return len(self.quotes) + len(self.rejects)
