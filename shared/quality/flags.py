"""Quality flags on the write path: batch flags stored with the quotes, outliers later.

A batch's flags are computed where its quotes are rendered (the ingest BatchWriter, in the
read-ahead thread for CSV) and written in its quotes' own rows, compactly
(shared.quality.compact: a flag set and a jump's base, a few cells of the COPY line), so a batch
whose every quote is flagged writes no extra row per quote. Per batch, one data anomaly per flag
kind and asset, and the quality of each asset's newest quote for the publish
(shared.ingest.publish: current_quotes.quality). Outliers need the other sources' quotes, so
they are judged after the batch published, for the assets it touched, and kept as JSON in
quote_flags. docs/quality.md gives the rules and costs.
"""
from __future__ import annotations

import functools
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import repeat
from operator import add, sub
from typing import Any, NamedTuple, Sequence

from shared.quality.checks import (
    JUMP,
    STALE,
    Flag,
    QualityThresholds,
    check_batch,
    jump_flag,
    quality_of,
)
from shared.quality.compact import (
    KIND_BITS,
    Compact,
    FlagSet,
    block_jumps,
    compact,
    rebuild,
)
from shared.batch.types import Batch

# (asset_id, observed_at, flags) of one flagged quote; observed_at as a datetime or ISO text.
Flagged = tuple[int, Any, list[Flag]]
UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_ZERO = timedelta(0)
# Flag set keys: (kind bits, page clock for a set holding `stale`, else None).
SetKey = tuple[int, "datetime | None"]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@functools.lru_cache(maxsize=4096)
def _iso(value: datetime) -> str:
    # The CSV blocks' stamps are UTC isoformat() text; the previous quote's time must compare.
    # Cached: a batch's coins mostly share their previous quote's time (a file's last day),
    # and this ran twice per coin and batch.
    return (value if value.utcoffset() == _ZERO else value.astimezone(UTC)).isoformat()


# Per asset of a batch, one query: the source's published quote (the previous quote a jump is
# judged against; the newest stored, which says whether the batch can meet a stored key) and
# how many other sources have a priced quote (an outlier needs two).
_PREVIOUS_AND_OTHERS = """
SELECT asset_id,
    max(observed_at) FILTER (WHERE source = %(source)s AND price_usd IS NOT NULL),
    max(price_usd) FILTER (WHERE source = %(source)s),
    count(*) FILTER (WHERE source <> %(source)s AND price_usd IS NOT NULL),
    max(observed_at) FILTER (WHERE source = %(source)s)
FROM current_quotes WHERE asset_id = ANY(%(assets)s::bigint[])
GROUP BY asset_id
"""


@dataclass
class BatchQuality:
    """A batch's flagged quotes in stored form, and what its writer needs around them."""

    source: str
    thresholds: QualityThresholds
    # Per quote block (index in batch.quote_blocks): its jumps, (rows, each one's base row;
    # -1 = the block's stored previous quote, in `previous`).
    jumps: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)
    previous: dict[int, tuple[str, float]] = field(default_factory=dict)
    # Per flagged ParsedQuote (index in batch.quotes): its stored form, or its flags as
    # documents when the stored form would not rebuild them (kept in quote_flags).
    quotes: dict[int, Compact] = field(default_factory=dict)
    documents: dict[int, list[Flag]] = field(default_factory=dict)
    # The page clock the batch's API quotes were judged stale against.
    fetched_at: datetime | None = None
    # Per asset, the source's newest stored quote (its published one).
    newest: dict[int, datetime] = field(default_factory=dict)
    # Assets that two other sources quote: only there can an outlier be told. Found before
    # the batch's turn (the read-ahead thread), so a batch of assets no other source has
    # spends nothing on outliers while batches wait for its commit.
    outlier_assets: list[int] = field(default_factory=list)
    batch: Batch | None = None
    assets: dict[str, int] = field(default_factory=dict)
    # ISO stamp -> microseconds since the epoch (a batch holds few distinct days).
    micros: dict[str, int] = field(default_factory=dict)

    def set_key(self, bits: int) -> SetKey:
        """The flag set a quote with these kinds belongs to."""
        return bits, (self.fetched_at if bits & KIND_BITS[STALE] else None)

    def set_keys(self) -> set[SetKey]:
        """Every flag set the batch's flagged quotes need."""
        keys = {self.set_key(bits) for bits, _, _ in self.quotes.values()}
        if any(self.jumps.values()):
            keys.add(self.set_key(KIND_BITS[JUMP]))
        return keys

    def may_meet_stored(self, spans: dict[int, tuple[str, str]]) -> list[int]:
        """The assets whose span (ISO text) starts at or before their newest stored quote.

        That quote is the published one (every batch publishes in its own transaction), so a
        batch whose every span starts after it (a first load, an append) cannot meet a stored
        key: nothing to probe.
        """
        newest = self.newest
        return [asset_id for asset_id, (first, _) in spans.items()
                if asset_id in newest and first <= _iso(newest[asset_id])]

    @property
    def flags(self) -> list[Flagged]:
        """Every flagged quote with its flags as served (rebuilt from the stored form)."""
        assert self.batch is not None
        found: list[Flagged] = []
        for index, (rows, bases) in self.jumps.items():
            block = self.batch.quote_blocks[index]
            asset_id = self.assets[block.source_asset_id]
            found.extend((asset_id, block.stamps[row], [self.block_flag(index, row, base)])
                         for row, base in zip(rows, bases))
        for index, stored in sorted(self.quotes.items()):
            quote = self.batch.quotes[index]
            found.append((self.assets[quote.source_asset_id], quote.observed_at,
                          self.quote_flags(index, stored)))
        found.extend((self.assets[self.batch.quotes[i].source_asset_id],
                      self.batch.quotes[i].observed_at, flags)
                     for i, flags in sorted(self.documents.items()))
        return found

    def block_flag(self, index: int, row: int, base: int) -> Flag:
        """The jump flag of a block's row, as rebuild gives it."""
        assert self.batch is not None
        block = self.batch.quote_blocks[index]
        base_at, base_price = (self.previous[index] if base < 0
                               else (block.stamps[base], float(block.prices[base])))
        return jump_flag(float(block.prices[row]), block.stamps[row], base_at, base_price,
                         self.thresholds)

    def stamp_micros(self, stamps: Sequence[str]) -> list[int]:
        """Each ISO stamp as microseconds since the epoch (parsed once per distinct stamp)."""
        cache = self.micros
        try:
            return list(map(cache.__getitem__, stamps))
        except KeyError:
            if len(cache) > 100_000:
                cache.clear()
            for stamp in set(stamps).difference(cache):
                cache[stamp] = (datetime.fromisoformat(stamp) - _EPOCH) // _MICROSECOND
            return list(map(cache.__getitem__, stamps))

    def quote_flags(self, index: int, stored: Compact) -> list[Flag]:
        """The flags of a ParsedQuote from its stored form."""
        assert self.batch is not None
        q = self.batch.quotes[index]
        fset = FlagSet(0, self.source, stored[0], self.fetched_at, self.thresholds)
        return rebuild(fset, q.observed_at, _float(q.price_usd), _float(q.market_cap_usd),
                       _float(q.volume_24h_usd), _float(q.circulating_supply), stored[1],
                       stored[2])


def batch_flags(cursor: Any, source: str, batch: Batch, assets: dict[str, int],
                thresholds: QualityThresholds,
                micros: dict[str, int] | None = None) -> BatchQuality:
    """The flagged quotes of a batch whose coins resolved to `assets` (one query).

    CSV blocks (the fast path's lines) are checked for jumps, one pass per coin over the
    price column (shared.quality.compact.block_jumps; times as ISO text): parsing the market
    cap and volume of every line too would cost about 15% of ingest on this machine
    (docs/quality.md); lines of the general path and API quotes get every check, as objects.
    An API page's quotes are judged stale against the page's own clock, the median of its
    quotes' times (at most now): a page recorded in 2022 is not stale as a whole, its coins
    hours behind the rest are, so a replayed page judges as it did live; one coin dated in
    the future cannot make the rest of its page stale. `micros`: a run's cache of its stamps'
    microseconds (a file's days repeat from batch to batch).
    """
    quality = BatchQuality(source, thresholds, batch=batch, assets=assets,
                           micros=micros if micros is not None else {})
    # `assets` is the run's whole identity cache: only this batch's coins are looked up.
    ids = {assets[b.source_asset_id] for b in batch.quote_blocks}
    ids.update(assets[q.source_asset_id] for q in batch.quotes)
    if not ids:
        return quality
    # The ids as one text literal ('{1,2}'), not ARRAY[1,2]: PostgreSQL parses and plans a
    # list's items one by one, which took longer than the query for a batch of 1,000 coins.
    cursor.execute(_PREVIOUS_AND_OTHERS, {
        "source": source, "assets": "{" + ",".join(map(str, sorted(ids))) + "}"})
    previous: dict[int, tuple[datetime, float]] = {}
    shared: list[int] = []
    for asset_id, at, price, others, newest in cursor.fetchall():
        if at is not None and price is not None:
            previous[int(asset_id)] = (at, float(price))
        if others >= 2:
            shared.append(int(asset_id))
        if newest is not None:
            quality.newest[int(asset_id)] = newest
    quality.outlier_assets = sorted(shared)
    factor = thresholds.jump_factor
    for index, block in enumerate(batch.quote_blocks):
        if not block.prices:
            continue
        prev = previous.get(assets[block.source_asset_id])
        stored = (_iso(prev[0]), prev[1]) if prev is not None else None
        rows, bases = block_jumps(block.stamps, list(map(float, block.prices)), factor, stored)
        if rows:
            quality.jumps[index] = (rows, bases)
            if stored is not None:
                quality.previous[index] = stored
    if batch.quotes:
        quotes = batch.quotes
        fetched_at = min(statistics.median_high(q.observed_at for q in quotes),
                         datetime.now(UTC))
        quality.fetched_at = fetched_at
        flags = check_batch(source, quotes, fetched_at, thresholds, previous=previous,
                            key=lambda q: assets[q.source_asset_id])
        for i, found in flags.items():
            stored_form = compact(quotes[i].observed_at, found)
            if stored_form is not None and quality.quote_flags(i, stored_form) == found:
                quality.quotes[i] = stored_form
            else:
                quality.documents[i] = found
    return quality


@dataclass
class FlagWrites:
    """What a batch writes for its flags, beside its quote lines' flag cells."""

    # Per flag set id, the batch's quotes written with it.
    set_counts: dict[int, int] = field(default_factory=dict)
    # Flags kept as documents (quote_flags): (asset_id, observed_at, flags).
    documents: list[Flagged] = field(default_factory=list)
    # One data anomaly per flag kind and asset: parallel arrays for _STORE_ANOMALIES.
    anomalies: dict[str, list[Any]] = field(default_factory=lambda: {
        "kinds": [], "keys": [], "first": [], "evidence": []})
    # The quality of each asset's newest quote in the batch, when flagged: for the publish.
    published: dict[str, list[Any]] = field(default_factory=lambda: {
        "flagged": [], "flagged_at": [], "quality": []})


class _Group(NamedTuple):
    """The flagged quotes of one kind and asset in a batch: first (time, flag), count, last."""

    first: str
    first_at: Any
    flag: Flag
    quotes: int
    last: str


def _stamp(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def flag_writes(quality: BatchQuality, set_ids: dict[SetKey, int]) -> FlagWrites:
    """The batch's flag set counts, documents, anomalies and publish qualities."""
    writes = FlagWrites()
    batch = quality.batch
    if batch is None:
        return writes
    assets = quality.assets
    groups: dict[tuple[str, int], list[_Group]] = defaultdict(list)
    # Per asset, its newest quote in the batch: (UTC ISO time, which sorts as time does, flags).
    newest: dict[int, tuple[str, list[Flag] | None]] = {}

    def offer(asset_id: int, at: str, flags: list[Flag] | None) -> None:
        known = newest.get(asset_id)
        if known is None or at > known[0]:
            newest[asset_id] = (at, flags)

    jump_set = set_ids.get(quality.set_key(KIND_BITS[JUMP]))
    for index, block in enumerate(batch.quote_blocks):
        if not block.stamps:
            continue
        asset_id = assets[block.source_asset_id]
        rows, bases = quality.jumps.get(index, ([], []))
        last = block.stamps.index(max(block.stamps))
        offer(asset_id, block.stamps[last],
              [quality.block_flag(index, last, bases[rows.index(last)])] if last in rows
              else None)
        if rows:
            assert jump_set is not None
            writes.set_counts[jump_set] = writes.set_counts.get(jump_set, 0) + len(rows)
            first = rows[0]
            groups[(JUMP, asset_id)].append(_Group(
                block.stamps[first], block.stamps[first],
                quality.block_flag(index, first, bases[0]), len(rows), block.stamps[rows[-1]]))
    for index, quote in enumerate(batch.quotes):
        asset_id = assets[quote.source_asset_id]
        flags: list[Flag] | None = None
        if index in quality.quotes:
            stored = quality.quotes[index]
            flags = quality.quote_flags(index, stored)
            set_id = set_ids[quality.set_key(stored[0])]
            writes.set_counts[set_id] = writes.set_counts.get(set_id, 0) + 1
        elif index in quality.documents:
            flags = quality.documents[index]
            writes.documents.append((asset_id, quote.observed_at, flags))
        offer(asset_id, _iso(quote.observed_at), flags)
        stamp = _stamp(quote.observed_at)
        for flag in flags or ():
            groups[(flag["flag"], asset_id)].append(
                _Group(stamp, quote.observed_at, flag, 1, stamp))
    for (kind, asset_id), parts in groups.items():
        head = min(parts, key=lambda g: g.first)
        writes.anomalies["kinds"].append(kind)
        writes.anomalies["keys"].append(f"quote:{asset_id}:{head.first}")
        writes.anomalies["first"].append(head.first_at)
        flag = head.flag
        writes.anomalies["evidence"].append(_dumps({
            "asset_id": asset_id, "reason": flag["reason"], **flag["evidence"],
            "quotes": sum(g.quotes for g in parts),
            "last_observed_at": max(g.last for g in parts)}))
    for asset_id, (at, flags) in sorted(newest.items()):
        if flags:
            writes.published["flagged"].append(asset_id)
            writes.published["flagged_at"].append(at)
            writes.published["quality"].append(_dumps(quality_of(flags)))
    return writes


def block_cells(quality: BatchQuality, index: int, set_id: int) -> tuple[list[int], list[str]]:
    """A block's flagged rows and their flag cells (COPY text: flag set, jump base price and
    age), built in C-level passes over the rows."""
    assert quality.batch is not None
    block = quality.batch.quote_blocks[index]
    rows, bases = quality.jumps[index]
    micros, prices = quality.stamp_micros(block.stamps), block.prices
    if index in quality.previous:
        # Base -1, the stored previous quote: the last item of both lists.
        at, price = quality.previous[index]
        micros = micros + quality.stamp_micros([at])
        prices = [*prices, repr(price)]
    ages = map(sub, map(micros.__getitem__, rows), map(micros.__getitem__, bases))
    # Each line's end: set, base price (its text), age; a daily file has few distinct ages.
    heads = map(add, repeat(f"\t{set_id}\t"), map(prices.__getitem__, bases))
    return rows, list(map(add, heads, map(_AGE_CELLS.__getitem__, ages)))


class _AgeCells(dict[int, str]):
    """Age (microseconds) -> its cell text and the line's end, made once per distinct age."""

    def __missing__(self, age: int) -> str:
        if len(self) > 100_000:
            self.clear()
        cell = self[age] = f"\t{age}\n"
        return cell


_AGE_CELLS = _AgeCells()


# One data anomaly per flag kind and asset of the batch, keyed and shaped like its first flagged
# quote's (quality.anomalies.quote_anomalies), plus how many of the batch's quotes of that asset
# carry the flag and the last one's time: a coin with a thousand bad rows is one line of
# /anomalies, not a thousand.
_STORE_ANOMALIES = """
INSERT INTO anomalies (kind, source, key, run_id, observed_at, evidence)
SELECT kind, %(source)s, k, %(run)s, t, ev
FROM unnest(%(kinds)s::text[], %(keys)s::text[], %(first)s::timestamptz[],
            %(evidence)s::jsonb[]) AS x(kind, k, t, ev)
ON CONFLICT (kind, source, key) DO NOTHING
"""


def store_batch_flags(cursor: Any, source: str, run_id: int | None,
                      writes: FlagWrites) -> int:
    """Store a batch's flag documents and data anomalies; returns how many anomalies were new."""
    if writes.documents:
        store_flags(cursor, source, writes.documents)
    if not writes.anomalies["kinds"]:
        return 0
    cursor.execute(_STORE_ANOMALIES, {"source": source, "run": run_id, **writes.anomalies})
    return int(cursor.rowcount)


# Flags kept as documents (outliers, and checks the stored form cannot rebuild): one row per
# such quote, and a re-check replaces its flags. From parallel arrays (one unnest, whose row
# count PostgreSQL knows).
_UPSERT_FLAGS = """
INSERT INTO quote_flags AS f (asset_id, source, observed_at, flags)
SELECT a, %(source)s, t, fl
FROM unnest(%(assets)s::bigint[], %(times)s::timestamptz[], %(flags)s::jsonb[]) AS v(a, t, fl)
ON CONFLICT (asset_id, source, observed_at) DO UPDATE SET flags = excluded.flags
WHERE f.flags IS DISTINCT FROM excluded.flags
"""


def store_flags(cursor: Any, source: str,
                flagged: Sequence[tuple[int, Any, Sequence[Flag]]]) -> int:
    """Store (asset_id, observed_at, flags) as flag documents in the caller's transaction;
    returns how many rows changed (flags equal to the stored ones change nothing)."""
    if not flagged:
        return 0
    unique = {(a, _stamp(t)): (a, t, f) for a, t, f in flagged}
    cursor.execute(_UPSERT_FLAGS, {
        "source": source, "assets": [a for a, _, _ in unique.values()],
        "times": [t for _, t, _ in unique.values()],
        "flags": [_dumps(list(f)) for _, _, f in unique.values()],
    })
    return int(cursor.rowcount)
