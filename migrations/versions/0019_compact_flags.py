"""quote flags stored compactly: quotes.flag_set and a jump's base, one flag_sets row per run

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 18:00:00.000000

A flagged quote used to get a quote_flags row holding its flags as a JSON document (~400
bytes, its own primary key), so a file whose every line is a jump wrote a second, heavier table
beside quotes. The batch checks' flags now go in the quote's own row, written by the same COPY
(shared.quality.compact): `flag_set` names a flag_sets row (the kinds, limits and page clock of
one run's flags) and a jump keeps its base quote's price and age (`jump_base_price`,
`jump_base_us`); every flag is rebuilt from these and the quote's own values. quote_flags keeps
the flags whose evidence is the quote's alone (outliers) and any it cannot rebuild.

Existing rows are converted: a quote's implausible/stale/jump flags move into its row when
the stored form rebuilds them exactly (the limits taken from their evidence, the others the
defaults), with one flag set per (source, run, kinds, page clock, limits); what is left (outliers,
anything else) stays in quote_flags. Adding nullable columns rewrites nothing. The downgrade
writes every stored flag back into quote_flags.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from shared.quality.checks import IMPLAUSIBLE, JUMP, STALE, QualityThresholds
from shared.quality.compact import (
    KIND_BITS,
    FlagSet,
    compact,
    flag_sets,
    rebuild,
    stored_flags,
    thresholds_doc,
)

# revision identifiers, used by Alembic.
revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration.0019")

CHUNK_ROWS = 10_000
# Which evidence figure holds which limit, by the rule it names.
_LIMITS = {
    "max(price/previous, previous/price) < threshold": ("jump_factor", "threshold"),
    "fetched_at - observed_at > threshold": ("stale_seconds", "threshold_seconds"),
    "market_cap_usd <= max_market_cap_usd": ("max_market_cap_usd", "threshold"),
    "market_cap_usd / volume_24h_usd <= threshold": ("mcap_volume_ratio", "threshold"),
    "1/threshold <= market_cap_usd / (price_usd * circulating_supply) <= threshold": (
        "mcap_supply_factor", "threshold"),
}

_LEGACY = """
SELECT f.asset_id, f.source, f.observed_at, f.flags, q.run_id, q.price_usd, q.market_cap_usd,
    q.volume_24h_usd, q.circulating_supply, q.asset_id IS NOT NULL
FROM quote_flags f
LEFT JOIN quotes q
    ON q.asset_id = f.asset_id AND q.source = f.source AND q.observed_at = f.observed_at
WHERE (f.asset_id, f.source, f.observed_at) > (%s, %s, %s)
ORDER BY f.asset_id, f.source, f.observed_at
LIMIT %s
"""
_SET_QUOTES = """
UPDATE quotes q SET flag_set = v.s, jump_base_price = v.p, jump_base_us = v.u
FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::bigint[], %s::float8[],
            %s::bigint[]) AS v(a, src, t, s, p, u)
WHERE q.asset_id = v.a AND q.source = v.src AND q.observed_at = v.t
"""
_KEEP_DOCUMENTS = """
UPDATE quote_flags f SET flags = v.fl
FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::jsonb[]) AS v(a, src, t, fl)
WHERE f.asset_id = v.a AND f.source = v.src AND f.observed_at = v.t
"""
_DROP_DOCUMENTS = """
DELETE FROM quote_flags f
USING unnest(%s::bigint[], %s::text[], %s::timestamptz[]) AS v(a, src, t)
WHERE f.asset_id = v.a AND f.source = v.src AND f.observed_at = v.t
"""


def upgrade():
    op.add_column("quotes", sa.Column("flag_set", sa.BigInteger(), nullable=True))
    op.add_column("quotes", sa.Column("jump_base_price", sa.Double(), nullable=True))
    op.add_column("quotes", sa.Column("jump_base_us", sa.BigInteger(), nullable=True))
    op.create_table(
        "flag_sets",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("kinds", sa.SmallInteger(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("thresholds", JSONB(), nullable=False),
        sa.Column("quotes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_flag_sets"),
    )
    _convert(op.get_bind().connection.cursor())


def _limits(source: str, flags: list[dict[str, Any]]) -> QualityThresholds:
    """The limits the flags name in their evidence; the defaults for the rest."""
    doc = thresholds_doc(QualityThresholds(), source)
    for flag in flags:
        evidence = flag.get("evidence") or {}
        name, figure = _LIMITS.get(evidence.get("rule"), (None, None))
        if name is not None and figure in evidence:
            doc[name] = evidence[figure]
    return QualityThresholds(
        stale_seconds={source: doc["stale_seconds"]}, jump_factor=doc["jump_factor"],
        max_market_cap_usd=doc["max_market_cap_usd"], mcap_volume_ratio=doc["mcap_volume_ratio"],
        mcap_supply_factor=doc["mcap_supply_factor"])


def _fetched_at(flags: list[dict[str, Any]]) -> datetime | None:
    for flag in flags:
        if flag.get("flag") == STALE and "fetched_at" in (flag.get("evidence") or {}):
            return datetime.fromisoformat(flag["evidence"]["fetched_at"])
    return None


def _convert(cursor: Any) -> None:
    """Move each quote's batch-check flags into its row where they rebuild exactly."""
    sets: dict[tuple[Any, ...], int] = {}
    counts: dict[int, int] = defaultdict(int)
    after: tuple[Any, ...] = (-1, "", datetime.min.isoformat() + "+00:00")
    moved = kept = 0
    while True:
        cursor.execute(_LEGACY, (*after, CHUNK_ROWS))
        rows = cursor.fetchall()
        if not rows:
            break
        after = rows[-1][:3]
        stored: list[tuple[Any, ...]] = []
        documents: list[tuple[Any, ...]] = []
        dropped: list[tuple[Any, ...]] = []
        for asset_id, source, at, flags, run_id, *values, has_quote in rows:
            checks = [f for f in flags if f.get("flag") in (IMPLAUSIBLE, STALE, JUMP)]
            rest = [f for f in flags if f.get("flag") not in (IMPLAUSIBLE, STALE, JUMP)]
            form = compact(at, checks) if checks and has_quote and flags == checks + rest \
                else None
            if form is None:
                kept += 1
                continue
            limits, fetched_at = _limits(source, checks), _fetched_at(checks)
            fset = FlagSet(0, source, form[0], fetched_at, limits)
            if rebuild(fset, at, *(None if v is None else float(v) for v in values),
                       form[1], form[2]) != checks:
                kept += 1
                continue
            key = (source, run_id, form[0], fetched_at,
                   json.dumps(thresholds_doc(limits, source), sort_keys=True))
            if key not in sets:
                cursor.execute(
                    "INSERT INTO flag_sets (source, run_id, kinds, fetched_at, thresholds) "
                    "VALUES (%s, %s, %s, %s, %s) RETURNING id", (*key[:4], key[4]))
                sets[key] = cursor.fetchone()[0]
            counts[sets[key]] += 1
            stored.append((asset_id, source, at, sets[key], form[1], form[2]))
            (documents.append((asset_id, source, at, json.dumps(rest))) if rest
             else dropped.append((asset_id, source, at)))
            moved += 1
        if stored:
            cursor.execute(_SET_QUOTES, [list(c) for c in zip(*stored)])
        if documents:
            cursor.execute(_KEEP_DOCUMENTS, [list(c) for c in zip(*documents)])
        if dropped:
            cursor.execute(_DROP_DOCUMENTS, [list(c) for c in zip(*dropped)])
        log.info("quote flags: %d moved into their quotes, %d kept as documents", moved, kept)
    for set_id, count in counts.items():
        cursor.execute("UPDATE flag_sets SET quotes = %s WHERE id = %s", (count, set_id))


_STORED = """
SELECT q.asset_id, q.source, q.observed_at, q.flag_set, q.jump_base_price, q.jump_base_us,
    q.price_usd, q.market_cap_usd, q.volume_24h_usd, q.circulating_supply, f.flags
FROM quotes q
LEFT JOIN quote_flags f
    ON f.asset_id = q.asset_id AND f.source = q.source AND f.observed_at = q.observed_at
WHERE q.flag_set IS NOT NULL
"""
_WRITE_DOCUMENTS = """
INSERT INTO quote_flags AS f (asset_id, source, observed_at, flags)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::jsonb[])
ON CONFLICT (asset_id, source, observed_at) DO UPDATE SET flags = excluded.flags
"""


def downgrade():
    conn = op.get_bind().connection
    reader, cursor = conn.cursor("flags_0019"), conn.cursor()
    reader.itersize = CHUNK_ROWS
    reader.execute(_STORED)
    while rows := reader.fetchmany(CHUNK_ROWS):
        # A named cursor describes its columns once it has fetched.
        names = [column[0] for column in reader.description]
        found = [dict(zip(names, row)) for row in rows]
        sets = flag_sets(cursor, (row["flag_set"] for row in found))
        cursor.execute(_WRITE_DOCUMENTS, [list(c) for c in zip(*(
            (row["asset_id"], row["source"], row["observed_at"],
             json.dumps(stored_flags(sets, row, row["flags"]))) for row in found))])
    reader.close()
    op.drop_table("flag_sets")
    op.drop_column("quotes", "jump_base_us")
    op.drop_column("quotes", "jump_base_price")
    op.drop_column("quotes", "flag_set")


# The bits of each kind are part of the stored data: a change needs a migration.
assert KIND_BITS == {IMPLAUSIBLE: 1, STALE: 2, JUMP: 4}
