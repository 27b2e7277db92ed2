"""GET /anomalies: run and data anomalies, newest first, filtered and keyset-paged."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from shared.models import Anomaly
from shared.queries.paging import Page, cursor_int, decode_cursor, fetch_page


def list_anomalies(
    session: Session,
    *,
    source: str | None = None,
    kind: str | None = None,
    since: datetime | None = None,
    offset: int = 0,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """One page of anomalies, newest first (by id), filtered by source, kind and created_at."""
    conditions: list[ColumnElement[bool]] = []
    if source:
        conditions.append(Anomaly.source == source)
    if kind:
        conditions.append(Anomaly.kind == kind)
    if since is not None:
        conditions.append(Anomaly.created_at >= since)
    base = select(Anomaly).where(*conditions)
    query = base
    if cursor is not None:
        payload = decode_cursor(cursor, "anomalies")
        query = query.where(Anomaly.id < cursor_int(payload, "id"))
        offset = 0
    query = query.order_by(Anomaly.id.desc())
    return fetch_page(session, query, base, offset=offset, limit=limit,
                      cursor_of=lambda row: {"t": "anomalies", "id": row.id})


def anomaly_counts(session: Session) -> dict[tuple[str, str], int]:
    """{(kind, source): how many anomalies are recorded} (for /stats and /metrics)."""
    rows = session.execute(
        select(Anomaly.kind, Anomaly.source, func.count()).group_by(Anomaly.kind, Anomaly.source)
    )
    return {(str(kind), str(source)): int(n) for kind, source, n in rows}
