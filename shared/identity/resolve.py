"""Identity unification: map each source's own coin id to one canonical asset."""
from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Sequence

from sqlalchemy import BigInteger, Text, any_, bindparam, cast, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from shared.identity.aliases import Alias, load_aliases
from shared.bounds import NAME_MAX, SOURCE_ASSET_ID_MAX, SYMBOL_MAX, text_problem
from shared.locks import IDENTITY_LOCK, lock_for_transaction
from shared.models import Asset, AssetSourceId

log = logging.getLogger(__name__)

# The alias file's reader lives in shared.identity.aliases; importers keep using these names
# from here.
__all__ = ["Alias", "IdentityError", "IdentityHint", "load_aliases", "lookup_mapped",
           "normalize_name", "resolve_assets", "slugify"]

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


class IdentityError(ValueError):
    """A source id the database cannot hold (sources reject such records before this)."""


def _fit(value: str | None, limit: int) -> str | None:
    """`value` as its column can hold it: no NUL (PostgreSQL text cannot), at most `limit`."""
    if value is None:
        return None
    return value.replace("\x00", "")[:limit]


def _storable(hint: IdentityHint) -> IdentityHint:
    """The hint with a symbol and name its columns hold; an id that does not fit raises.

    Sources reject such records first (shared.bounds); this keeps a missed one from failing
    the whole batch inside an INSERT. A name or symbol can be cut, an id cannot: two ids cut
    alike would become one coin.
    """
    problem = text_problem(hint.source_asset_id, SOURCE_ASSET_ID_MAX, "source asset id")
    if problem is not None:
        raise IdentityError(problem)
    symbol, name = _fit(hint.symbol, SYMBOL_MAX), _fit(hint.name, NAME_MAX)
    if symbol == hint.symbol and name == hint.name:
        return hint
    return IdentityHint(hint.source_asset_id, symbol or "", name)


_NOT_ALNUM = re.compile(r"[^a-z0-9]")
_NOT_ALNUM_RUN = re.compile(r"[^a-z0-9]+")


def _ascii_fold(text_: str) -> str:
    # ASCII has no decompositions: skip NFKD for it (a batch folds every name it sees).
    if text_.isascii():
        return text_
    return unicodedata.normalize("NFKD", text_).encode("ascii", "ignore").decode()


def normalize_name(name: str | None) -> str:
    """Lower-case ASCII letters and digits only: 'Wrapped Bitcoin' -> 'wrappedbitcoin'."""
    if not name:
        return ""
    return _NOT_ALNUM.sub("", _ascii_fold(name).lower())


def slugify(text_: str) -> str:
    """A URL-safe slug: 'BTC Bitcoin' -> 'btc-bitcoin'."""
    folded = _ascii_fold(text_).lower()
    return _NOT_ALNUM_RUN.sub("-", folded).strip("-")[:180] or "asset"


def lookup_mapped(session: Session, source: str, ids: Iterable[str]) -> dict[str, int]:
    """Existing mappings of these source ids."""
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = session.execute(
        select(AssetSourceId.source_asset_id, AssetSourceId.asset_id).where(
            AssetSourceId.source == source, AssetSourceId.source_asset_id == _any(wanted)
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
    missing = {h.source_asset_id: _storable(h) for h in hints if h.source_asset_id not in known}
    if not missing:
        return known
    known.update(lookup_mapped(session, source, missing))
    unmapped = [h for sid, h in missing.items() if sid not in known]
    if not unmapped:
        return known
    # Held while new mappings are decided, so two sources loading at once cannot both
    # create "Bitcoin".
    lock_for_transaction(session, IDENTITY_LOCK)
    # Someone may have mapped them while we waited for the lock.
    known.update(lookup_mapped(session, source, (h.source_asset_id for h in unmapped)))
    plans = [_plan(source, h, aliases) for h in unmapped if h.source_asset_id not in known]
    if plans:
        view = _BatchView.load(session, source, plans)
        # Decided one hint at a time, in the given order, against the in-memory view: what
        # the per-hint loop did with a query per question and a flush per new asset.
        decisions = [view.decide(plan) for plan in plans]
        _insert_assets(session, view.created)
        _insert_mappings(session, source, plans, decisions, known)
    session.flush()
    return known


# How many suffixed slugs ("<base>-2", "<base>-3", ...) beyond the batch's own claims are
# fetched up front for a base that is already taken; a longer run costs one more SELECT.
_SLUG_SLACK = 8
_SLUG_WINDOW = 64
_SUFFIXED = re.compile(r"(.+)-[0-9]+")


class _Plan(NamedTuple):
    """A hint with the alias file applied: the evidence its decision uses."""

    hint: IdentityHint
    alias: Alias | None
    symbol: str
    name: str | None
    key: str  # normalize_name(name)
    pinned: str | None  # the alias file's slug: this asset, created if absent
    base: str  # slug a new asset starts from (unused when pinned)


@dataclass(eq=False, slots=True)
class _Asset:
    """An asset as the batch sees it: read from the database, or created by this batch."""

    id: int  # negative placeholder until a created asset is inserted
    slug: str
    symbol: str
    name: str


def _array(values: Iterable[str | None]) -> str:
    """A PostgreSQL text[] literal ('{"a","b",NULL}'), to bind as one parameter and cast.

    Parsed as one value; a Python list would be sent as ARRAY['a','b',...], one expression
    per element, several times slower to parse for a 100,000-coin batch.
    """
    return "{" + ",".join(
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    ) + "}"


def _int_array(values: Iterable[int]) -> str:
    """A PostgreSQL bigint[] literal ('{1,2}')."""
    return "{" + ",".join(map(str, values)) + "}"


def _any(values: Iterable[str]) -> Any:
    """`= ANY(array)`: the values as one bound text[] instead of a parameter each."""
    return any_(cast(bindparam(None, _array(values), type_=Text), ARRAY(Text)))


def _any_int(values: Iterable[int]) -> Any:
    """`= ANY(array)` for bigint values."""
    return any_(cast(bindparam(None, _int_array(values), type_=Text), ARRAY(BigInteger)))


def _plan(source: str, hint: IdentityHint, aliases: dict[tuple[str, str], Alias]) -> _Plan:
    alias = aliases.get((source, hint.source_asset_id))
    symbol = (alias.symbol if alias and alias.symbol else hint.symbol).upper()
    name = alias.name if alias and alias.name else hint.name
    if alias and alias.asset_slug:
        return _Plan(hint, alias, symbol, name, "", alias.asset_slug, "")
    # slugify twice, as before: a slug cut at 180 characters may end in "-", which the
    # second pass strips.
    base = slugify(hint.source_asset_id if source == "coingecko" else slugify(
        f"{symbol}-{name}" if name else symbol
    ))
    return _Plan(hint, alias, symbol, name, normalize_name(name), None, base)


class _BatchView:
    """Every asset one batch's decisions can look at, read with a few set-based SELECTs.

    The sequential algorithm asked the database one question at a time (asset by slug, assets
    by symbol, does this asset hold an id from the source, is this slug free) and flushed each
    new asset before the next hint. Here the same questions are answered from dictionaries
    filled up front, and each decision updates them (new asset, new slug, new holder) so that
    later hints of the batch see what earlier ones did, exactly as after a flush.
    """

    def __init__(self, session: Session, source: str) -> None:
        self.session = session
        self.source = source
        self.by_slug: dict[str, _Asset | None] = {}  # None: checked, no such asset
        self.by_name: dict[tuple[str, str], list[_Asset]] = {}
        self.holders: set[int] = set()  # assets that hold an id from `source`
        self.created: list[_Asset] = []

    @classmethod
    def load(cls, session: Session, source: str, plans: Sequence[_Plan]) -> _BatchView:
        """Read the slugs, same-symbol assets and id holders the plans can ask about."""
        view = cls(session, source)
        pinned = [p.pinned for p in plans if p.pinned is not None]
        claims = Counter(p.base for p in plans if p.pinned is None)
        gecko = {p.hint.source_asset_id for p in plans
                 if source == "coingecko" and p.pinned is None}
        view._fetch_slugs({*pinned, *gecko, *claims})

        # A base taken in the database or claimed twice in the batch will be suffixed, and
        # so will a base that such a suffix can take ("x-2" after "x"): read their
        # suffixed slugs now rather than one at a time.
        claims.update(s for s in pinned if s in claims)
        contested = {b for b in claims if view.by_slug.get(b) is not None or claims[b] > 1}
        grew = bool(contested)
        while grew:
            more = {b for b in claims if b not in contested
                    and (m := _SUFFIXED.fullmatch(b)) and m.group(1) in contested}
            contested |= more
            grew = bool(more)
        if contested:
            view._fetch_slugs(f"{b}-{n}" for b in contested
                              for n in range(2, 2 + claims[b] + _SLUG_SLACK))

        symbols = {p.symbol for p in plans if p.name and p.pinned is None}
        if symbols:
            rows = session.execute(
                select(Asset.id, Asset.slug, Asset.symbol, Asset.name)
                .where(Asset.symbol == _any(symbols))
            )
            for row in rows:
                asset = _Asset(*row)
                view.by_name.setdefault((asset.symbol, normalize_name(asset.name)), []).append(
                    asset)

        if source in ONE_ID_PER_COIN:
            wanted = {(p.symbol, p.key) for p in plans if p.name and p.pinned is None}
            ids = {a.id for key in wanted for a in view.by_name.get(key, ())}
            ids.update(a.id for s in gecko if (a := view.by_slug.get(s)) is not None)
            if ids:
                view.holders.update(session.scalars(
                    select(AssetSourceId.asset_id).distinct().where(
                        AssetSourceId.source == source,
                        AssetSourceId.asset_id == _any_int(ids),
                    )
                ))
        return view

    def decide(self, plan: _Plan) -> tuple[_Asset, str]:
        """The asset this hint maps to and how it was matched; records the new mapping."""
        asset, how = self._match_or_create(plan)
        self.holders.add(asset.id)
        return asset, how

    def _match_or_create(self, plan: _Plan) -> tuple[_Asset, str]:
        symbol, name, alias = plan.symbol, plan.name, plan.alias
        if plan.pinned is not None:
            asset = self._slug(plan.pinned)
            if asset is None:
                asset = self._create(plan.pinned, symbol, name or symbol)
            return asset, "alias"
        if self.source == "coingecko":
            # CoinGecko ids are our preferred slugs; an asset created under one (e.g. from
            # the alias file) with the same symbol is the same coin.
            asset = self._slug(plan.hint.source_asset_id)
            if asset is not None and asset.symbol == symbol and not self._has_id(asset):
                return asset, "slug"
        if name:
            candidates = [a for a in self.by_name.get((symbol, plan.key), ())
                          if not self._has_id(a)]
            if len(candidates) == 1:
                return candidates[0], "alias+symbol+name" if alias else "symbol+name"
            if len(candidates) > 1:
                log.info(
                    "identity: %s %s matches %d assets by symbol+name; kept apart",
                    self.source, plan.hint.source_asset_id, len(candidates),
                )
        # The name key is the plan's unless the column cuts the name.
        key = plan.key if name and len(name) <= NAME_MAX else None
        return self._create(self._free_slug(plan.base), symbol, name or symbol, key), "new"

    def _has_id(self, asset: _Asset) -> bool:
        return self.source in ONE_ID_PER_COIN and asset.id in self.holders

    def _slug(self, slug: str) -> _Asset | None:
        if slug not in self.by_slug:  # not expected: load() reads every slug it can ask for
            self._fetch_slugs([slug])
        return self.by_slug[slug]

    def _free_slug(self, base: str) -> str:
        candidate, n = base, 1
        while True:
            if candidate not in self.by_slug:  # a run of taken suffixes longer than read
                self._fetch_slugs(f"{base}-{k}" for k in range(n, n + _SLUG_WINDOW))
            if self.by_slug[candidate] is None:
                return candidate
            n += 1
            candidate = f"{base}-{n}"

    def _fetch_slugs(self, slugs: Iterable[str]) -> None:
        wanted = {s for s in slugs if s not in self.by_slug}
        if not wanted:
            return
        self.by_slug.update(dict.fromkeys(wanted))
        rows = self.session.execute(
            select(Asset.id, Asset.slug, Asset.symbol, Asset.name).where(
                Asset.slug == _any(wanted))
        )
        for row in rows:
            self.by_slug[row.slug] = _Asset(*row)

    def _create(self, slug: str, symbol: str, name: str, key: str | None = None) -> _Asset:
        asset = _Asset(-1 - len(self.created), slug, _fit(symbol.upper(), SYMBOL_MAX) or "",
                       _fit(name, NAME_MAX) or "")
        self.created.append(asset)
        self.by_slug[slug] = asset
        key = normalize_name(asset.name) if key is None else key
        self.by_name.setdefault((asset.symbol, key), []).append(asset)
        return asset


def _insert_assets(session: Session, created: Sequence[_Asset]) -> None:
    """One INSERT for the batch's new assets, in creation order; sets their real ids."""
    if not created:
        return
    rows = session.execute(
        text(
            "INSERT INTO assets (slug, symbol, name) "
            "SELECT slug, symbol, name FROM unnest(CAST(:slugs AS text[]), "
            "CAST(:symbols AS text[]), CAST(:names AS text[])) "
            "WITH ORDINALITY AS t(slug, symbol, name, ord) ORDER BY ord "
            "RETURNING id, slug"
        ),
        {"slugs": _array(a.slug for a in created), "symbols": _array(a.symbol for a in created),
         "names": _array(a.name for a in created)},
    )
    ids = dict((slug, asset_id) for asset_id, slug in rows)
    for asset in created:
        asset.id = ids[asset.slug]


def _insert_mappings(
    session: Session,
    source: str,
    plans: Sequence[_Plan],
    decisions: Sequence[tuple[_Asset, str]],
    known: dict[str, int],
) -> None:
    """One INSERT for the batch's mappings; `known` gets every id as stored."""
    rows = session.execute(
        text(
            "INSERT INTO asset_source_ids "
            "(source, source_asset_id, asset_id, symbol, name, matched_by) "
            "SELECT :source, sid, asset_id, symbol, name, how FROM unnest("
            "CAST(:sids AS text[]), CAST(:asset_ids AS bigint[]), CAST(:symbols AS text[]), "
            "CAST(:names AS text[]), CAST(:hows AS text[])) "
            "AS t(sid, asset_id, symbol, name, how) "
            "ON CONFLICT DO NOTHING RETURNING source_asset_id"
        ),
        {
            "source": source,
            "sids": _array(p.hint.source_asset_id for p in plans),
            "asset_ids": _int_array(asset.id for asset, _ in decisions),
            "symbols": _array(p.hint.symbol for p in plans),
            "names": _array(p.hint.name for p in plans),
            "hows": _array(how for _, how in decisions),
        },
    )
    inserted = set(rows.scalars())
    for plan, (asset, _) in zip(plans, decisions):
        known[plan.hint.source_asset_id] = asset.id
    # Only a writer that skipped the lock can have mapped one of them meanwhile: its mapping
    # is the one stored, so it is the one to use.
    lost = [p.hint.source_asset_id for p in plans if p.hint.source_asset_id not in inserted]
    known.update(lookup_mapped(session, source, lost))
