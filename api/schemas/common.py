"""Marshmallow schemas: fields, request arguments, errors and the data/raw response bodies.

The operations endpoints' bodies (jobs, runs, stats, health) are in api.schemas.ops.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Sequence

import marshmallow as ma
from marshmallow import validate
from webargs.fields import DelimitedList

from api.schemas.quality import ExcludedSchema, QualityField, WindowSchema, quality_out
from shared.config import SOURCES
from shared.queries.jobs import JOB_TRIGGERS
from shared.models import RUN_STATUSES
from shared.queries.data import DATA_SORT_FIELDS
from shared.queries.paging import BIGINT_MAX, CURSOR_MAX_LENGTH

PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500
HISTORY_MAX_RANGE = timedelta(days=366)
ASSET_LIST_MAX = 100


# --- fields ------------------------------------------------------------------------------------

class DecimalString(ma.fields.Field[Decimal]):
    """An exact decimal as a plain string (no exponent, no float rounding)."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return format(Decimal(value), "f")


DECIMAL_DOC = {"type": "string", "nullable": True, "pattern": r"^-?\d+(\.\d+)?$",
               "description": "Exact decimal as a string"}


class Text(ma.fields.String):
    """A string argument that PostgreSQL can hold (no NUL characters)."""

    default_error_messages = {"nul": "Must not contain NUL characters."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        result: str = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in result:
            raise self.make_error("nul")
        return result


class UtcDateTime(ma.fields.AwareDateTime):
    """An ISO 8601 timestamp; naive values are taken as UTC; returned in UTC."""

    default_error_messages = {"range": "Timestamp out of range."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("metadata", {}).setdefault(
            "description", "ISO 8601 timestamp (UTC when no offset is given)")
        super().__init__(format="iso", default_timezone=timezone.utc, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        parsed: datetime = super()._deserialize(value, attr, data, **kwargs)
        try:
            return parsed.astimezone(timezone.utc)
        except (OverflowError, ValueError) as exc:
            raise self.make_error("range") from exc


def _id_field(**kwargs: Any) -> ma.fields.Integer:
    return ma.fields.Integer(strict=False, validate=validate.Range(min=1, max=BIGINT_MAX),
                             **kwargs)


def _sort_choices(fields: tuple[str, ...]) -> list[str]:
    return [*fields, *(f"-{f}" for f in fields)]


# --- request arguments -------------------------------------------------------------------------

def _string_keys(messages: Any) -> Any:
    """Error messages with every dict key a string (marshmallow keys list items by int)."""
    if isinstance(messages, dict):
        return {str(key): _string_keys(value) for key, value in messages.items()}
    if isinstance(messages, list):
        return [_string_keys(item) for item in messages]
    return messages


class ArgsSchema(ma.Schema):
    """Base of every request schema: error keys are strings.

    marshmallow keys a list item's errors by its index (an int); next to a string key such
    as `_schema`, Flask's JSON encoder (which sorts keys) raised TypeError and the 422 became
    a 500 (`POST /jobs {"sources": ["csv", "csv", "x"]}`).
    """

    def handle_error(self, error: ma.ValidationError, data: Any, **kwargs: Any) -> None:
        """Re-raise with string keys throughout."""
        raise ma.ValidationError(_string_keys(error.messages), data=error.data,
                                 valid_data=error.valid_data) from error


class PageArgsSchema(ArgsSchema):
    """Page-number paging, or keyset paging with the opaque `cursor` of the previous page."""

    page = ma.fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000),
                             metadata={"description": "Page number (ignored with `cursor`)"})
    page_size = ma.fields.Integer(
        load_default=PAGE_SIZE_DEFAULT,
        validate=validate.Range(min=1, max=PAGE_SIZE_MAX),
    )
    cursor = Text(validate=validate.Length(min=1, max=CURSOR_MAX_LENGTH),
                  metadata={"description": "`pagination.next_cursor` of the previous page"})


class TimeRangeMixin(ArgsSchema):
    """`since`/`until` bounds, inclusive, with `since` not after `until`."""

    since = UtcDateTime()
    until = UtcDateTime()

    @ma.validates_schema
    def _ordered(self, data: dict[str, Any], **_: Any) -> None:
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            raise ma.ValidationError("until must not be before since", field_name="until")


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
        load_default="asset_id", validate=validate.OneOf(_sort_choices(DATA_SORT_FIELDS)),
        metadata={"description": "Sort field; prefix `-` for descending. Ties: asset_id, source. "
                                 "By price, market cap or volume, clean quotes come first, "
                                 "then flagged ones (each part in the sort order)"},
    )
    quality = ma.fields.String(
        validate=validate.OneOf(("ok", "flagged")),
        metadata={"description": "Only clean (`ok`) or only flagged quotes"})


class HistoryArgsSchema(PageArgsSchema, TimeRangeMixin):
    """Filters and paging of GET /data/<asset>/history."""

    source = ma.fields.String(validate=validate.OneOf(SOURCES))

    @ma.validates_schema
    def _bounded(self, data: dict[str, Any], **_: Any) -> None:
        """The range cap with both ends or an open end (now); the view checks an open start."""
        since, until = data.get("since"), data.get("until")
        days = HISTORY_MAX_RANGE.days
        if since and until and until - since > HISTORY_MAX_RANGE:
            raise ma.ValidationError(f"until - since must not exceed {days} days",
                                     field_name="until")
        if since and not until and datetime.now(timezone.utc) - since > HISTORY_MAX_RANGE:
            raise ma.ValidationError(
                f"since must be at most {days} days ago when until is not given "
                "(an open until counts as now)", field_name="since")


class RawArgsSchema(PageArgsSchema):
    """Filters and paging of GET /raw/<source>."""

    run_id = _id_field()


class RunsArgsSchema(PageArgsSchema, TimeRangeMixin):
    """Filters and paging of GET /runs (`since`/`until` bound `created_at`)."""

    source = ma.fields.String(validate=validate.OneOf(SOURCES))
    status = ma.fields.String(validate=validate.OneOf(RUN_STATUSES))
    job_id = _id_field()


class JobsArgsSchema(PageArgsSchema, TimeRangeMixin):
    """Filters and paging of GET /jobs (`since`/`until` bound `created_at`)."""

    status = ma.fields.String(validate=validate.OneOf(RUN_STATUSES))
    trigger = ma.fields.String(validate=validate.OneOf(JOB_TRIGGERS),
                               metadata={"description": "What queued the job"})


class CompareArgsSchema(ArgsSchema):
    """The two runs of GET /runs/compare."""

    a = _id_field(required=True)
    b = _id_field(required=True)


class SourceNames(ma.fields.List[str]):
    """Distinct source names; each bad item is one message naming its position."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["metadata"] = {"uniqueItems": True, **kwargs.get("metadata", {})}
        super().__init__(ma.fields.String(validate=validate.OneOf(SOURCES)),
                         validate=validate.Length(min=1, max=len(SOURCES)), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise self.make_error("invalid")
        problems: list[str] = []
        seen: set[str] = set()
        for index, item in enumerate(value):
            if not isinstance(item, str):
                problems.append(f"item {index}: not a string")
            elif item not in SOURCES:
                problems.append(f"item {index}: unknown source; must be one of: "
                                f"{', '.join(SOURCES)}")
            elif item in seen:
                problems.append(f"item {index}: {item} is already listed")
            else:
                seen.add(item)
        if problems:
            raise ma.ValidationError(problems)
        return list(value)


class JobRequestSchema(ArgsSchema):
    """POST /jobs body: which sources to run (default: all configured)."""

    class Meta:
        unknown = ma.RAISE

    sources = SourceNames(metadata={"description": "Distinct source names"})


class JobHeadersSchema(ArgsSchema):
    """POST /jobs headers: an optional Idempotency-Key."""

    idempotency_key = ma.fields.String(
        data_key="Idempotency-Key",
        validate=[validate.Length(min=1, max=200), validate.Regexp(r"^[\x21-\x7e]+$")],
        metadata={"description": "Repeat a request safely: the same key returns the same job"},
    )


# --- response bodies ---------------------------------------------------------------------------

class ErrorSchema(ma.Schema):
    """The body of every non-2xx response."""

    code = ma.fields.Integer(required=True, metadata={"description": "HTTP status code"})
    status = ma.fields.String(required=True, metadata={"description": "HTTP status name"})
    message = ma.fields.String(metadata={"description": "What went wrong"})
    errors = ma.fields.Dict(metadata={"description": "Validation errors by location and field"})


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


class PaginationSchema(ma.Schema):
    """Where this page sits in the result, and the cursor of the next page."""

    page = ma.fields.Integer(required=True, allow_none=True,
                             metadata={"description": "null when paging by cursor"})
    page_size = ma.fields.Integer(required=True)
    total = ma.fields.Integer(required=True)
    total_pages = ma.fields.Integer(required=True)
    next_cursor = ma.fields.String(
        required=True, allow_none=True,
        metadata={"description": "Pass as `cursor` for the next page; null on the last page"})


class EnvelopeSchema(ma.Schema):
    """The body of every list endpoint."""

    request_id = ma.fields.String(required=True)
    api_latency_ms = ma.fields.Float(required=True)
    pagination = ma.fields.Nested(PaginationSchema, required=True)


class DataEnvelopeSchema(EnvelopeSchema):
    """GET /data."""

    data = ma.fields.List(ma.fields.Nested(QuoteRecordSchema), required=True)


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


class HistoryEnvelopeSchema(EnvelopeSchema):
    """GET /data/<asset>/history."""

    data = ma.fields.List(ma.fields.Nested(HistoryRecordSchema), required=True)


class AssetSchema(ma.Schema):
    """A canonical asset."""

    id = ma.fields.Integer(required=True)
    slug = ma.fields.String(required=True)
    symbol = ma.fields.String(required=True)
    name = ma.fields.String(required=True)


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


class RawRecordSchema(ma.Schema):
    """A record exactly as it was received."""

    id = ma.fields.Integer(required=True)
    source = ma.fields.String(required=True)
    source_key = ma.fields.String(required=True)
    payload = ma.fields.String(required=True)
    fetched_at = ma.fields.DateTime(format="iso", required=True)
    run_id = ma.fields.Integer(allow_none=True)
    content_hash = ma.fields.Method("_hex", required=True, metadata={"type": "string"})

    def _hex(self, record: Any) -> str:
        return bytes(record.content_hash).hex()


class RawEnvelopeSchema(EnvelopeSchema):
    """GET /raw/<source>."""

    data = ma.fields.List(ma.fields.Nested(RawRecordSchema), required=True)
