"""Schemas of GET /data, /data/<asset> and its history (api.resources.data), quality included."""
from __future__ import annotations

import functools
from datetime import datetime, timezone
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any, Sequence

import marshmallow as ma
from flask.json.provider import DefaultJSONProvider, JSONProvider
from marshmallow import validate
from webargs.fields import DelimitedList

from api.schemas.common import (
    DECIMAL_DOC,
    ArgsSchema,
    AssetSchema,
    DecimalString,
    EnvelopeSchema,
    PageArgsSchema,
    PaginationSchema,
    Text,
    TimeRangeMixin,
    UtcDateTime,
    sort_choices,
)
from shared.config import SOURCES
from shared.quality.checks import FLAG_KINDS
from shared.queries.assets import RangeTooLong, check_history_range
from shared.queries.data import DATA_RECORD_FIELDS, DATA_SORT_FIELDS
from shared.storage.rollups import RESOLUTIONS

ASSET_LIST_MAX = 100

FORMAT_FIELD_DOC = ("Answer as `json` (pages), or stream every row of the range as `csv` or "
                    "`ndjson` (also chosen by `Accept: text/csv` / `application/x-ndjson`)")


def format_field() -> ma.fields.String:
    """The `format` query argument of the endpoints that export."""
    return ma.fields.String(validate=validate.OneOf(("json", "csv", "ndjson")),
                            metadata={"description": FORMAT_FIELD_DOC})


# --- request arguments -------------------------------------------------------------------------

class DataArgsSchema(PageArgsSchema, TimeRangeMixin):
    """Filters, sort and paging of GET /data."""

    source = ma.fields.String(validate=validate.OneOf(SOURCES))
    symbol = DelimitedList(
        Text(validate=validate.Length(min=1, max=64)),
        validate=validate.Length(min=1, max=ASSET_LIST_MAX),
        metadata={"description": "Exact symbols, case-insensitive, comma separated "
                                 f"(at most {ASSET_LIST_MAX})"},
    )
    asset = DelimitedList(
        Text(validate=validate.Length(min=1, max=200)),
        validate=validate.Length(min=1, max=ASSET_LIST_MAX),
        metadata={"description": f"Asset ids or slugs, comma separated (at most {ASSET_LIST_MAX})"},
    )
    q = Text(validate=validate.Length(min=1, max=100),
             metadata={"description": "Substring of the name or symbol, case-insensitive"})
    sort = ma.fields.String(
        load_default="asset_id", validate=validate.OneOf(sort_choices(DATA_SORT_FIELDS)),
        metadata={"description": "Sort field; prefix `-` for descending. Ties: asset_id, source. "
                                 "By price, market cap or volume, clean quotes come first, "
                                 "then flagged ones (each part in the sort order)"},
    )
    quality = ma.fields.String(
        validate=validate.OneOf(("ok", "flagged")),
        metadata={"description": "Only clean (`ok`) or only flagged quotes"})
    total = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "Count every matching record: `pagination.total` and "
                                 "`total_pages` (an exact count); null without it"})


class HistoryArgsSchema(PageArgsSchema, TimeRangeMixin):
    """Filters and paging of GET /data/<asset>/history."""

    source = ma.fields.String(validate=validate.OneOf(SOURCES))
    total = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "Count every row of the range, full and rolled up: "
                                 "`pagination.total` and `total_pages` (exact); null without "
                                 "it"})

    @ma.validates_schema
    def _bounded(self, data: dict[str, Any], **_: Any) -> None:
        """The range cap with both ends or an open end (now); the reads check an open start."""
        try:
            check_history_range(data.get("since"), data.get("until"), datetime.now(timezone.utc))
        except RangeTooLong as exc:
            raise ma.ValidationError(str(exc), field_name=exc.field) from None


class DataExportArgsSchema(DataArgsSchema):
    """GET /data with the export `format`."""

    format = format_field()


class HistoryExportArgsSchema(HistoryArgsSchema):
    """GET /data/<asset>/history with the export `format`."""

    format = format_field()


class DetailArgsSchema(ArgsSchema):
    """GET /data/<asset>: `as_of` sends the client to GET /data/<asset>/as_of."""

    as_of = UtcDateTime(metadata={"description": "Point in time: answered by a 307 to "
                                                 "`/data/<asset>/as_of?at=`"})


# --- quality -----------------------------------------------------------------------------------

def quality_out(stored: Any) -> dict[str, Any]:
    """The served `quality` of a quote from its stored value (None = clean: no row stored)."""
    if not stored or not stored.get("flags"):
        return {"status": "ok", "flags": []}
    return {"status": "flagged", "flags": list(stored.get("flags", []))}


class FlagSchema(ma.Schema):
    """One quality flag: its kind, why, and the numbers behind it (with the rule)."""

    flag = ma.fields.String(required=True, validate=validate.OneOf(FLAG_KINDS))
    reason = ma.fields.String(required=True)
    evidence = ma.fields.Dict(required=True, metadata={
        "description": "Values, baseline and threshold the check compared, and its `rule`"})


class QualitySchema(ma.Schema):
    """A quote's quality: `ok` with no flags, or `flagged` with each flag and its reason."""

    status = ma.fields.String(required=True, validate=validate.OneOf(("ok", "flagged")))
    flags = ma.fields.List(ma.fields.Nested(FlagSchema), required=True)


class QualityField(ma.fields.Nested):
    """A stored quality value (None when clean) served as QualitySchema."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", True)
        super().__init__(QualitySchema, **kwargs)

    # marshmallow names the first argument differently in Field and Nested: either name breaks
    # one of the two signatures for mypy.
    def _serialize(self, nested_obj: Any, attr: Any, obj: Any,  # type: ignore[override]
                   **kwargs: Any) -> Any:
        return quality_out(nested_obj)


class WindowSchema(ma.Schema):
    """The consensus window: it ends at the freshest clean quote and spans `seconds` back."""

    seconds = ma.fields.Integer(required=True)
    start = ma.fields.String(required=True, allow_none=True,
                             metadata={"description": "ISO 8601; null without a clean quote"})
    end = ma.fields.String(required=True, allow_none=True,
                           metadata={"description": "ISO 8601; null without a clean quote"})


class ExcludedSchema(ma.Schema):
    """A source left out of the consensus, and why."""

    source = ma.fields.String(required=True)
    reason = ma.fields.String(required=True, validate=validate.OneOf(
        ("out_of_window", "flagged", "no_price")))
    observed_at = ma.fields.String(required=True, allow_none=True)
    detail = ma.fields.String(required=True)


# --- response bodies ---------------------------------------------------------------------------

class QuoteRecordSchema(ma.Schema):
    """One current record per (asset, source)."""

    asset_id = ma.fields.Integer(required=True)
    symbol = ma.fields.String(required=True)
    name = ma.fields.String(required=True)
    source = ma.fields.String(required=True)
    source_asset_id = ma.fields.String(required=True)
    price_usd = DecimalString(metadata=DECIMAL_DOC)
    market_cap_usd = DecimalString(metadata=DECIMAL_DOC)
    volume_24h_usd = DecimalString(metadata=DECIMAL_DOC)
    rank = ma.fields.Integer(allow_none=True)
    observed_at = ma.fields.DateTime(format="iso", required=True)
    quality = QualityField()


def quote_record(row: Sequence[Any]) -> dict[str, Any]:
    """QuoteRecordSchema().dump of a shared.queries.data.DATA_RECORD_FIELDS row, sans marshmallow.

    The money columns arrive as PostgreSQL's numeric text, which is already the plain-notation
    string DecimalString gives; the time is formatted as DateTime(format="iso") does. A test
    compares both paths on every loaded record.
    """
    (asset_id, symbol, name, source, source_asset_id, price_usd, market_cap_usd,
     volume_24h_usd, rank, observed_at, quality) = row
    return {
        "asset_id": asset_id, "symbol": symbol, "name": name, "source": source,
        "source_asset_id": source_asset_id, "price_usd": price_usd,
        "market_cap_usd": market_cap_usd, "volume_24h_usd": volume_24h_usd, "rank": rank,
        "observed_at": observed_at.isoformat(), "quality": quality_out(quality),
    }


# The separators Flask's default provider writes a response with (unless debug or compact=False).
_COMPACT = (",", ":")


@functools.lru_cache(maxsize=4)
def _record_format(sort_keys: bool, ensure_ascii: bool) -> str:
    """A str.format template of one record: its values by DATA_RECORD_FIELDS position, its keys
    in the provider's order."""
    escape = encode_basestring_ascii if ensure_ascii else encode_basestring
    order = sorted(DATA_RECORD_FIELDS) if sort_keys else list(DATA_RECORD_FIELDS)
    pairs = ",".join(f"{escape(name)}:{{{DATA_RECORD_FIELDS.index(name)}}}" for name in order)
    return "{{" + pairs + "}}"


def quote_records_json(rows: Sequence[Sequence[Any]], provider: JSONProvider, debug: bool
                       ) -> str | None:
    """The JSON array of [quote_record(row) ...] exactly as `provider` writes it in a response,
    built as text: half the time of the dicts and their dump. None unless `provider` is Flask's
    default one writing compact JSON (as it does unless the app is in `debug` mode or told
    compact=False).

    Values are written as the json module writes them: strings escaped by its own functions,
    ints by repr, a flagged quality by a dump with the provider's options.
    tests/api/test_data_records_json.py compares both on every kind of value.
    """
    if type(provider) is not DefaultJSONProvider or provider.compact is False \
            or (provider.compact is None and debug):
        return None
    ensure_ascii = bool(provider.ensure_ascii)
    fmt = _record_format(bool(provider.sort_keys), ensure_ascii).format
    escape = encode_basestring_ascii if ensure_ascii else encode_basestring
    clean = provider.dumps(quality_out(None), separators=_COMPACT)
    # A page's quotes mostly share their observed_at. Equal instants read in one session have
    # one UTC offset (the session's time zone), so one text.
    times: dict[datetime, str] = {}
    out = []
    for (asset_id, symbol, name, source, source_asset_id, price_usd, market_cap_usd,
         volume_24h_usd, rank, observed_at, quality) in rows:
        observed = times.get(observed_at)
        if observed is None:
            observed = times[observed_at] = escape(observed_at.isoformat())
        out.append(fmt(
            asset_id, escape(symbol), escape(name), escape(source), escape(source_asset_id),
            "null" if price_usd is None else escape(price_usd),
            "null" if market_cap_usd is None else escape(market_cap_usd),
            "null" if volume_24h_usd is None else escape(volume_24h_usd),
            "null" if rank is None else rank, observed,
            clean if quality is None
            else provider.dumps(quality_out(quality), separators=_COMPACT)))
    return "[" + ",".join(out) + "]"


class DataPaginationSchema(PaginationSchema):
    """GET /data's pagination: the totals only when asked for (`total=true`)."""

    total = ma.fields.Integer(required=True, allow_none=True, metadata={
        "description": "Records matching the filters (exact), with `total=true`; else null"})
    total_pages = ma.fields.Integer(required=True, allow_none=True, metadata={
        "description": "Pages of `page_size` records, with `total=true`; else null"})


class DataEnvelopeSchema(EnvelopeSchema):
    """GET /data."""

    data = ma.fields.List(ma.fields.Nested(QuoteRecordSchema), required=True)
    pagination = ma.fields.Nested(DataPaginationSchema, required=True)


class HistoryRecordSchema(ma.Schema):
    """One observation of an asset at one source."""

    asset_id = ma.fields.Integer(required=True)
    source = ma.fields.String(required=True)
    source_asset_id = ma.fields.String(required=True)
    observed_at = ma.fields.DateTime(format="iso", required=True)
    price_usd = DecimalString(metadata=DECIMAL_DOC)
    market_cap_usd = DecimalString(metadata=DECIMAL_DOC)
    volume_24h_usd = DecimalString(metadata=DECIMAL_DOC)
    circulating_supply = DecimalString(metadata=DECIMAL_DOC)
    total_supply = DecimalString(metadata=DECIMAL_DOC)
    max_supply = DecimalString(metadata=DECIMAL_DOC)
    rank = ma.fields.Integer(allow_none=True)
    open_usd = DecimalString(metadata=DECIMAL_DOC)
    high_usd = DecimalString(metadata=DECIMAL_DOC)
    low_usd = DecimalString(metadata=DECIMAL_DOC)
    close_usd = DecimalString(metadata=DECIMAL_DOC)
    run_id = ma.fields.Integer(allow_none=True)
    quality = QualityField()
    resolution = ma.fields.String(required=True, validate=validate.OneOf(RESOLUTIONS), metadata={
        "description": "full: a stored quote; hourly or daily: past the retention horizon, a "
                       "rollup bucket (docs/storage.md): observed_at its last time, price_usd "
                       "its close, open/high/low/close its own"})
    bucket_start = ma.fields.String(metadata={"description": "A rollup row's bucket, UTC"})
    bucket_end = ma.fields.String(metadata={"description": "A rollup row's bucket end"})
    quotes = ma.fields.Integer(metadata={"description": "The quotes a rollup row folds"})


class HistoryPaginationSchema(PaginationSchema):
    """GET /data/<asset>/history's pagination: the totals only when asked for (`total=true`)."""

    total = ma.fields.Integer(required=True, allow_none=True, metadata={
        "description": "Rows of the range (full quotes and rollup buckets, exact), with "
                       "`total=true`; else null"})
    total_pages = ma.fields.Integer(required=True, allow_none=True, metadata={
        "description": "Pages of `page_size` rows, with `total=true`; else null"})


class HistoryEnvelopeSchema(EnvelopeSchema):
    """GET /data/<asset>/history."""

    data = ma.fields.List(ma.fields.Nested(HistoryRecordSchema), required=True)
    pagination = ma.fields.Nested(HistoryPaginationSchema, required=True)


class AssetSourceIdSchema(ma.Schema):
    """The asset's own id at one source, and how it was matched."""

    source = ma.fields.String(required=True)
    source_asset_id = ma.fields.String(required=True)
    symbol = ma.fields.String(allow_none=True)
    name = ma.fields.String(allow_none=True)
    matched_by = ma.fields.String(required=True)


class ConsensusSchema(ma.Schema):
    """Price agreement of the clean quotes observed within one window (shared.quality.consensus)."""

    price_usd = DecimalString(required=True, metadata={
        **DECIMAL_DOC, "description": "Median of the in-window clean prices"})
    min_price_usd = DecimalString(required=True, metadata=DECIMAL_DOC)
    max_price_usd = DecimalString(required=True, metadata=DECIMAL_DOC)
    spread = ma.fields.Float(required=True, allow_none=True)
    disagree = ma.fields.Boolean(required=True, metadata={
        "description": "Two or more in-window clean prices spread more than `threshold`"})
    threshold = ma.fields.Float(required=True,
                                metadata={"description": "Spread above which sources disagree"})
    sources = ma.fields.List(ma.fields.String(), required=True,
                             metadata={"description": "Sources that took part"})
    window = ma.fields.Nested(WindowSchema, required=True)
    excluded = ma.fields.List(ma.fields.Nested(ExcludedSchema), required=True)
    single_source = ma.fields.Boolean(required=True)
    note = ma.fields.String(required=True)


class AssetDetailSchema(ma.Schema):
    """GET /data/<asset>."""

    asset = ma.fields.Nested(AssetSchema, required=True)
    source_ids = ma.fields.List(ma.fields.Nested(AssetSourceIdSchema), required=True)
    quotes = ma.fields.List(ma.fields.Nested(QuoteRecordSchema), required=True)
    consensus = ma.fields.Nested(ConsensusSchema, required=True)
