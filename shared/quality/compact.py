"""Flags stored compactly: a quote's flag set and jump base, rebuilt into the JSON served.

What the batch checks find costs a few cells of the quote's own row (migration 0019), not a row
or a JSON document of its own: `quotes.flag_set` names the flag_sets row of its kinds (one per
run, kinds and page clock: the limits the checks applied and, for `stale`, the page's clock)
and a `jump` keeps the price and age of the quote it was judged against (`jump_base_price`,
`jump_base_us`). Every other figure of a flag is the quote's own (price, market cap, volume,
supply, time), so `rebuild` calls the checks' own flag builders (shared.quality.checks) and
serves exactly what the check found. Flags whose evidence is the quote's alone (outliers,
judged across sources) stay JSON documents in quote_flags (shared.quality.flags).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import compress, islice, repeat
from operator import ge, le, lt, mul, or_, sub, truediv
from typing import Any, Iterable, Mapping, Sequence

from shared.quality.checks import (
    IMPLAUSIBLE,
    JUMP,
    STALE,
    Flag,
    QualityThresholds,
    implausible_flags,
    jump_flag,
    stale_flag,
)

UTC = timezone.utc
# A flag set's kinds as bits, in the order the checks list a quote's flags.
KIND_BITS: dict[str, int] = {IMPLAUSIBLE: 1, STALE: 2, JUMP: 4}
_MICROSECOND = timedelta(microseconds=1)

# (bits, jump base price, jump base age in microseconds) of one flagged quote.
Compact = tuple[int, "float | None", "int | None"]


@dataclass(frozen=True)
class FlagSet:
    """One flag_sets row: which checks fired, with which limits, against which page clock."""

    id: int
    source: str
    kinds: int
    fetched_at: datetime | None
    thresholds: QualityThresholds


def thresholds_doc(thresholds: QualityThresholds, source: str) -> dict[str, Any]:
    """The limits a flag set keeps (the source's stale limit; outliers are not compact)."""
    return {"stale_seconds": thresholds.stale_seconds.get(source, 0),
            "jump_factor": thresholds.jump_factor,
            "max_market_cap_usd": thresholds.max_market_cap_usd,
            "mcap_volume_ratio": thresholds.mcap_volume_ratio,
            "mcap_supply_factor": thresholds.mcap_supply_factor}


def _thresholds(doc: Mapping[str, Any], source: str) -> QualityThresholds:
    return QualityThresholds(
        stale_seconds={source: doc["stale_seconds"]}, jump_factor=doc["jump_factor"],
        max_market_cap_usd=doc["max_market_cap_usd"], mcap_volume_ratio=doc["mcap_volume_ratio"],
        mcap_supply_factor=doc["mcap_supply_factor"])


def kinds_of(bits: int) -> list[str]:
    """The flag kinds of a set's bits, in KIND_BITS order."""
    return [kind for kind, bit in KIND_BITS.items() if bits & bit]


def rebuild(fset: FlagSet, observed_at: datetime, price: float | None, mcap: float | None,
            volume: float | None, supply: float | None, base_price: float | None,
            base_us: int | None) -> list[Flag]:
    """The flags of one quote of `fset`, exactly as the checks wrote them (numbers as floats).

    The CSV fast path checks jumps only (its prices have no sign, so none is implausible):
    a quote flagged only by a jump never re-runs the market-cap rules here.
    """
    limits = fset.thresholds
    flags: list[Flag] = []
    if fset.kinds & KIND_BITS[IMPLAUSIBLE]:
        flags.extend(implausible_flags(price, mcap, volume, supply, limits))
    at = observed_at.astimezone(UTC)
    if fset.kinds & KIND_BITS[STALE] and fset.fetched_at is not None:
        stale = stale_flag(fset.source, at, fset.fetched_at.astimezone(UTC), limits)
        if stale is not None:
            flags.append(stale)
    if fset.kinds & KIND_BITS[JUMP] and None not in (price, base_price, base_us):
        assert price is not None and base_price is not None and base_us is not None
        base_at = at - base_us * _MICROSECOND
        flags.append(jump_flag(price, at.isoformat(), base_at.isoformat(), base_price, limits))
    return flags


def compact(observed_at: datetime, flags: Sequence[Flag]) -> Compact | None:
    """A quote's flags in stored form, or None if some flag is not a batch check's."""
    bits = 0
    base_price: float | None = None
    base_us: int | None = None
    for flag in flags:
        bit = KIND_BITS.get(flag["flag"])
        if bit is None:
            return None
        bits |= bit
        if flag["flag"] == JUMP:
            evidence = flag["evidence"]
            base_price = float(evidence["previous_price_usd"])
            base_at = datetime.fromisoformat(str(evidence["previous_observed_at"]))
            base_us = (observed_at - base_at) // _MICROSECOND
    return bits, base_price, base_us


def block_jumps(times: Sequence[str], prices: Sequence[float], factor: float,
                previous: tuple[str, float] | None) -> tuple[list[int], list[int]]:
    """The jumps among one coin's rows: (rows, the row each was judged against; -1: `previous`).

    The rule of shared.quality.checks.check_columns over one key: rows in time order, each
    against the last priced one before it (a price at or below zero is no base, a row at the
    base's time is not compared). Rows in strictly increasing time with every price above
    zero (a CSV block) take C-level passes: their base is the row before, and a file whose
    every line jumps costs a few list passes, not a loop.
    """
    count = len(prices)
    rows: list[int] = []
    bases: list[int] = []
    if not count:
        return rows, bases
    if all(map(lt, times, islice(times, 1, None))) and min(prices) > 0:
        if previous is not None and previous[0] < times[0] and previous[1] > 0:
            move = prices[0] / previous[1]
            if move >= factor or move * factor <= 1:
                rows.append(0)
                bases.append(-1)
        moves = list(map(truediv, islice(prices, 1, None), prices))
        if moves and (max(moves) >= factor or min(moves) * factor <= 1):
            high = map(ge, moves, repeat(factor))
            low = map(le, map(mul, moves, repeat(factor)), repeat(1))
            jumped = list(compress(range(1, count), map(or_, high, low)))
            rows.extend(jumped)
            bases.extend(map(sub, jumped, repeat(1)))
        return rows, bases
    order: Iterable[int] = range(count)
    if not all(map(le, times, islice(times, 1, None))):
        order = sorted(order, key=times.__getitem__)
    last = (previous[0], previous[1], -1) if previous is not None else None
    for row in order:
        price = prices[row]
        if price <= 0:
            continue
        at = times[row]
        if last is not None and last[0] < at and last[1] > 0:
            move = price / last[1]
            if move >= factor or move * factor <= 1:
                rows.append(row)
                bases.append(last[2])
        last = (at, price, row)
    return rows, bases


_SET_COLUMNS = "id, source, kinds, fetched_at, thresholds"


def _flag_set(row: Sequence[Any]) -> FlagSet:
    set_id, source, kinds, fetched_at, doc = row
    return FlagSet(int(set_id), source, int(kinds), fetched_at, _thresholds(doc, source))


def flag_sets(cursor: Any, ids: Iterable[int | None],
              known: Mapping[int, FlagSet] | None = None) -> dict[int, FlagSet]:
    """The flag sets of these ids: `known` ones as given, the rest read (one query)."""
    known = known or {}
    wanted = {int(i) for i in ids if i is not None}
    found = {i: known[i] for i in wanted if i in known}
    missing = sorted(wanted - found.keys())
    if missing:
        cursor.execute(f"SELECT {_SET_COLUMNS} FROM flag_sets WHERE id = ANY(%s)", (missing,))
        for row in cursor.fetchall():
            fset = _flag_set(row)
            found[fset.id] = fset
    return found


_NEW_SET = (
    "INSERT INTO flag_sets (source, run_id, kinds, fetched_at, thresholds) "
    f"VALUES (%s, %s, %s, %s, %s) RETURNING {_SET_COLUMNS}"
)


def new_flag_set(cursor: Any, source: str, run_id: int | None, bits: int,
                 fetched_at: datetime | None, thresholds: QualityThresholds) -> FlagSet:
    """Write a flag set in the caller's transaction."""
    cursor.execute(_NEW_SET, (source, run_id, bits, fetched_at,
                              json.dumps(thresholds_doc(thresholds, source))))
    return _flag_set(cursor.fetchone())


def stored_flags(sets: Mapping[int, FlagSet], row: Mapping[str, Any],
                 extra: Sequence[Flag] | None = None) -> list[Flag]:
    """A stored quote's flags: its flag set's, rebuilt, then its JSON ones (`extra`).

    `row` holds the quote's observed_at, flag_set, jump_base_price, jump_base_us and its
    price_usd, market_cap_usd, volume_24h_usd and circulating_supply (Decimal, text or float).
    """
    flags: list[Flag] = []
    set_id = row.get("flag_set")
    if set_id is not None and int(set_id) in sets:
        flags = rebuild(sets[int(set_id)], row["observed_at"], _float(row.get("price_usd")),
                        _float(row.get("market_cap_usd")), _float(row.get("volume_24h_usd")),
                        _float(row.get("circulating_supply")),
                        _float(row.get("jump_base_price")), row.get("jump_base_us"))
    return flags + list(extra or ())


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
