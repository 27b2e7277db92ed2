"""Identity unification: map each source's own coin id to one canonical asset."""
from __future__ import annotations

import csv
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.models import Asset, AssetSourceId

log = logging.getLogger(__name__)

# Held (per transaction) while new mappings are decided, so two sources loading at once
# cannot both create "Bitcoin".
IDENTITY_LOCK_KEY = 0x6B617370  # "kasp"

# Sources whose ids are one-per-coin: two ids of such a source are two coins, so an asset
# never takes a second id from the same one. CSV ids (a symbol from a file name, a
# symbol+name pair) can legitimately repeat a coin across files.
ONE_ID_PER_COIN = frozenset({"coingecko", "coinpaprika"})


@dataclass(frozen=True)
class IdentityHint:
    """What a record says about its coin."""

    source_asset_id: str
    symbol: str
    name: str | None


@dataclass(frozen=True)
class Alias:
    """A line of the alias file: treat (source, id) as this coin."""

    source: str
    source_asset_id: str
    asset_slug: str | None
    symbol: str | None
    name: str | None


def normalize_name(name: str | None) -> str:
    """Lower-case ASCII letters and digits only: 'Wrapped Bitcoin' -> 'wrappedbitcoin'."""
    if not name:
        return ""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", folded.lower())


def slugify(text_: str) -> str:
    """A URL-safe slug: 'BTC Bitcoin' -> 'btc-bitcoin'."""
    folded = unicodedata.normalize("NFKD", text_).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", folded).strip("-")[:180] or "asset"


def load_aliases(path: Path | None) -> dict[tuple[str, str], Alias]:
    """Read the alias file (source,source_asset_id,asset_slug,symbol,name); missing = empty."""
    if path is None or not path.is_file():
        return {}
    aliases: dict[tuple[str, str], Alias] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(line for line in handle if not line.startswith("#")):
            source = (row.get("source") or "").strip()
            source_id = (row.get("source_asset_id") or "").strip()
            if not source or not source_id:
                continue
            aliases[(source, source_id)] = Alias(
                source,
                source_id,
                (row.get("asset_slug") or "").strip() or None,
                (row.get("symbol") or "").strip().upper() or None,
                (row.get("name") or "").strip() or None,
            )
    return aliases


def lookup_mapped(session: Session, source: str, ids: Iterable[str]) -> dict[str, int]:
    """Existing mappings of these source ids."""
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = session.execute(
        select(AssetSourceId.source_asset_id, AssetSourceId.asset_id).where(
            AssetSourceId.source == source, AssetSourceId.source_asset_id.in_(wanted)
        )
    )
    return {source_id: asset_id for source_id, asset_id in rows}


def resolve_assets(
    session: Session,
    source: str,
    hints: Sequence[IdentityHint],
    aliases: dict[tuple[str, str], Alias],
    known: dict[str, int] | None = None,
) -> dict[str, int]:
    """Asset id for every hint's source id, creating assets/mappings as needed (flushes)."""
    known = {} if known is None else known
    missing = {h.source_asset_id: h for h in hints if h.source_asset_id not in known}
    if not missing:
        return known
    known.update(lookup_mapped(session, source, missing))
    unmapped = [h for sid, h in missing.items() if sid not in known]
    if not unmapped:
        return known
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": IDENTITY_LOCK_KEY})
    # Someone may have mapped them while we waited for the lock.
    known.update(lookup_mapped(session, source, (h.source_asset_id for h in unmapped)))
    for hint in unmapped:
        if hint.source_asset_id in known:
            continue
        asset_id, how = _match_or_create(session, source, hint, aliases)
        session.execute(
            insert(AssetSourceId)
            .values(
                source=source,
                source_asset_id=hint.source_asset_id,
                asset_id=asset_id,
                symbol=hint.symbol,
                name=hint.name,
                matched_by=how,
            )
            .on_conflict_do_nothing()
        )
        known[hint.source_asset_id] = asset_id
    session.flush()
    return known


def _match_or_create(
    session: Session, source: str, hint: IdentityHint, aliases: dict[tuple[str, str], Alias]
) -> tuple[int, str]:
    alias = aliases.get((source, hint.source_asset_id))
    symbol = (alias.symbol if alias and alias.symbol else hint.symbol).upper()
    name = alias.name if alias and alias.name else hint.name
    if alias and alias.asset_slug:
        asset = session.scalar(select(Asset).where(Asset.slug == alias.asset_slug))
        if asset is None:
            asset = _create(session, alias.asset_slug, symbol, name or symbol, exact_slug=True)
        return asset.id, "alias"
    if source == "coingecko":
        # CoinGecko ids are our preferred slugs; an asset created under one (e.g. from the
        # alias file) with the same symbol is the same coin.
        asset = session.scalar(
            select(Asset).where(Asset.slug == hint.source_asset_id, Asset.symbol == symbol)
        )
        if asset is not None and not _has_id_from(session, asset.id, source):
            return asset.id, "slug"
    if name:
        candidates = _candidates(session, source, symbol, name)
        if len(candidates) == 1:
            return candidates[0], "alias+symbol+name" if alias else "symbol+name"
        if len(candidates) > 1:
            log.info(
                "identity: %s %s matches %d assets by symbol+name; kept apart",
                source, hint.source_asset_id, len(candidates),
            )
    slug = hint.source_asset_id if source == "coingecko" else slugify(
        f"{symbol}-{name}" if name else symbol
    )
    asset = _create(session, slug, symbol, name or symbol)
    return asset.id, "new"


def _has_id_from(session: Session, asset_id: int, source: str) -> bool:
    if source not in ONE_ID_PER_COIN:
        return False
    return bool(
        session.scalar(
            select(func.count()).select_from(AssetSourceId).where(
                AssetSourceId.asset_id == asset_id, AssetSourceId.source == source
            )
        )
    )


def _candidates(session: Session, source: str, symbol: str, name: str) -> list[int]:
    """Assets with the same symbol and normalized name that may take an id from `source`."""
    wanted = normalize_name(name)
    rows = session.execute(select(Asset.id, Asset.name).where(Asset.symbol == symbol)).all()
    matches = [asset_id for asset_id, asset_name in rows if normalize_name(asset_name) == wanted]
    return [a for a in matches if not _has_id_from(session, a, source)]


def _create(
    session: Session, slug: str, symbol: str, name: str, exact_slug: bool = False
) -> Asset:
    base = slugify(slug) if not exact_slug else slug
    candidate, n = base, 1
    while session.scalar(select(func.count()).select_from(Asset).where(Asset.slug == candidate)):
        n += 1
        candidate = f"{base}-{n}"
    asset = Asset(slug=candidate, symbol=symbol.upper()[:64], name=name[:300])
    session.add(asset)
    session.flush()
    return asset
