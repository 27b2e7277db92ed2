"""GET /anomalies: run and data anomalies, newest first, filtered and keyset-paged, with names."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import (
    BigInteger, ColumnElement, Select, and_, any_, bindparam, func, select, union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased

from shared.errors import NotFound
from shared.models import Anomaly, Asset, Quote
from shared.queries.assets import resolve_asset
from shared.queries.paging import Page, newest_first, time_bounds, where_given

# A symbol shared by more assets than this names none of them usefully (and each is one more
# index scan in the list's plan): 404 asking for the id or slug instead.
SYMBOL_ASSETS_MAX = 20


def anomaly_asset_ids(session: Session, ref: str) -> list[int]:
    """The assets `ref` names: the asset of that id; else of exactly that slug; else every
    asset of that symbol (any case); else of that slug in another case. NotFound for none.

    Slugs are lower case and symbols upper case: `usdq` is the coin whose slug it is, `USDQ`
    every coin whose symbol it is, and `USDQ` is taken as a slug only when it is no symbol.
    """
    ref = ref.strip()
    if ref.isdigit() and ref.isascii():
        return [resolve_asset(session, ref).id]
    exact = session.scalar(select(Asset.id).where(Asset.slug == ref))
    if exact is not None:
        return [exact]
    symbol = ref.upper()
    ids = list(session.scalars(select(Asset.id).where(Asset.symbol == symbol)
                               .order_by(Asset.id).limit(SYMBOL_ASSETS_MAX + 1)))
    if len(ids) > SYMBOL_ASSETS_MAX:
        raise NotFound(f"symbol {symbol[:100]!r} names more than {SYMBOL_ASSETS_MAX} assets: "
                       "give an asset id or slug")
    if ids:
        return ids
    try:
        return [resolve_asset(session, ref).id]
    except NotFound:
        raise NotFound(f"asset {ref[:100]!r} not found (by id, slug or symbol)") from None


def _asset_range(asset_id: int, conditions: list[ColumnElement[bool]]) -> Select[Any]:
    """One asset's anomalies, newest first, read backwards along ix_anomalies_asset.

    `asset_id = ANY(ARRAY[x])` ordered by (asset_id, id), not `asset_id = x` ordered by id:
    with the equality the planner may walk the primary key backwards and filter, which reads
    every newer anomaly of other coins when this coin's are old; this order only the
    (asset_id, id) index gives.
    """
    ids = bindparam(None, [asset_id], type_=ARRAY(BigInteger))
    return (select(Anomaly).where(Anomaly.asset_id == any_(ids), *conditions)
            .order_by(Anomaly.asset_id.desc(), Anomaly.id.desc()))


def _by_asset(conditions: list[ColumnElement[bool]], asset_ids: Sequence[int], rows: int
              ) -> Select[Any]:
    """Anomalies of these assets, newest first, reading at most `rows` index entries of each.

    Several assets (a shared symbol): each one's newest `rows`, merged and sorted, so a page
    costs (assets x rows) entries however many anomalies each coin has.
    """
    if len(asset_ids) == 1:
        return _asset_range(asset_ids[0], conditions)
    ranges = aliased(Anomaly, union_all(*(
        _asset_range(asset_id, conditions).limit(rows) for asset_id in asset_ids)).subquery())
    return select(ranges).order_by(ranges.id.desc())


def list_anomalies(session: Session, *, source: str | None = None, kind: str | None = None,
                   since: datetime | None = None, asset: str | None = None, **window: Any
                   ) -> Page:
    """One page of anomalies, newest first (by id), filtered by source, kind, created_at and
    asset (id, slug or symbol; NotFound for none); each row a dict as AnomalySchema reads.

    `window`: offset, limit and cursor, as newest_first takes.
    """
    filters = where_given((Anomaly.source, source), (Anomaly.kind, kind))
    filters += time_bounds(Anomaly.created_at, since, None)
    if asset is None:
        page = newest_first(session, Anomaly, filters, kind="anomalies", **window)
    else:
        asset_ids = anomaly_asset_ids(session, asset)
        page = newest_first(
            session, Anomaly, [*filters, Anomaly.asset_id.in_(asset_ids)], kind="anomalies",
            ranges=lambda after, rows: _by_asset([*filters, *after], asset_ids, rows), **window)
    return Page(rows=with_assets(session, page.rows), total=page.total,
                next_cursor=page.next_cursor)


def with_assets(session: Session, rows: Sequence[Anomaly]) -> list[dict[str, Any]]:
    """The anomalies as dicts, each data anomaly with its asset {id, slug, symbol, name} and the
    quote's own id at its source (`source_asset_id`), read now (one query for the page)."""
    ids = sorted({row.id for row in rows if row.asset_id is not None})
    names: dict[int, tuple[dict[str, Any], str | None]] = {}
    if ids:
        found = session.execute(
            select(Anomaly.id, Asset.id, Asset.slug, Asset.symbol, Asset.name,
                   Quote.source_asset_id)
            .join(Asset, Asset.id == Anomaly.asset_id)
            # The flagged quote itself (primary-key probe): its id at that source then.
            .outerjoin(Quote, and_(Quote.asset_id == Anomaly.asset_id,
                                   Quote.source == Anomaly.source,
                                   Quote.observed_at == Anomaly.observed_at))
            .where(Anomaly.id.in_(ids)))
        for anomaly_id, asset_id, slug, symbol, name, quote_id in found:
            names[anomaly_id] = ({"id": asset_id, "slug": slug, "symbol": symbol, "name": name},
                                 quote_id)
    result = []
    for row in rows:
        asset: dict[str, Any] | None = None
        source_asset_id: str | None = None
        if row.id in names:
            asset, source_asset_id = names[row.id]
        result.append({
            "id": row.id, "kind": row.kind, "source": row.source, "key": row.key,
            "run_id": row.run_id, "observed_at": row.observed_at, "asset": asset,
            "source_asset_id": source_asset_id, "evidence": row.evidence,
            "created_at": row.created_at,
        })
    return result


def anomaly_counts(session: Session) -> dict[tuple[str, str], int]:
    """{(kind, source): how many anomalies are recorded} (for /stats and /metrics)."""
    rows = session.execute(
        select(Anomaly.kind, Anomaly.source, func.count()).group_by(Anomaly.kind, Anomaly.source)
    )
    return {(str(kind), str(source)): int(n) for kind, source, n in rows}
