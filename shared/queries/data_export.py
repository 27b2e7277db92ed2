"""GET /data as CSV/NDJSON: every current record of the filters, in the pages' order, streamed."""
from __future__ import annotations

from typing import Any, Iterator

from sqlalchemy import Connection, select

from shared.queries.export import CHUNK_ROWS, iso_utc
# The listing's own filter and column definitions, so the export cannot drift from the pages.
from shared.queries.data import (
    _CLEAN_FIRST_FIELDS,
    _DATA_RECORD_COLUMNS,
    _DATA_SORT_COLUMNS,
    _FLAGGED,
    DATA_RECORD_FIELDS,
    DATA_SORT_FIELDS,
    DataFilters,
    _data_conditions,
    parse_sort,
)

DATA_EXPORT_FIELDS = (*DATA_RECORD_FIELDS, "flags")


def data_records(conn: Connection, filters: DataFilters, sort: str
                 ) -> Iterator[dict[str, Any]]:
    """The current records of `filters` in `sort` order (as GET /data pages them)."""
    name, descending = parse_sort(sort, DATA_SORT_FIELDS)
    column = _DATA_SORT_COLUMNS[name]
    ordered = (column.desc() if descending else column.asc()).nulls_last()
    clean_first = [_FLAGGED] if name in _CLEAN_FIRST_FIELDS else []
    query = (select(*_DATA_RECORD_COLUMNS).where(*_data_conditions(filters))
             .order_by(*clean_first, ordered, _DATA_SORT_COLUMNS["asset_id"],
                       _DATA_SORT_COLUMNS["source"]))
    result = conn.execution_options(stream_results=True, yield_per=CHUNK_ROWS).execute(query)
    for partition in iter(lambda: result.fetchmany(CHUNK_ROWS), []):
        for row in partition:
            record = dict(zip(DATA_RECORD_FIELDS, row))
            record["observed_at"] = iso_utc(record["observed_at"])
            quality = record["quality"]
            kinds = sorted({f.get("flag", "") for f in (quality or {}).get("flags", [])})
            record["quality"] = "flagged" if kinds else "ok"
            record["flags"] = ";".join(kinds)
            yield record
