"""Schemas of candles and point-in-time lookups (api.resources.history)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import marshmallow as ma
from marshmallow import validate

from api.schemas.common import (
    DECIMAL_DOC,
    ArgsSchema,
    AssetSchema,
    EnvelopeSchema,
    Text,
    UtcDateTime,
)
from api.schemas.data import HistoryArgsSchema, format_field
from shared.config import SOURCES
from shared.queries.as_of import AS_OF_BATCH_MAX
from shared.queries.candles import GAP_NO_QUOTES, GAP_ROLLED_UP
from shared.queries.candles import INTERVALS
from shared.storage.rollups import RESOLUTIONS


class CandleArgsSchema(HistoryArgsSchema):
    """Arguments of GET /data/<asset>/candles (the history range cap and paging apply)."""

    source = ma.fields.String(required=True, validate=validate.OneOf(SOURCES))
    interval = ma.fields.String(load_default="1d", validate=validate.OneOf(tuple(INTERVALS)),
                                metadata={"description": "Bucket length, aligned to UTC"})
    format = format_field()


class CandleSchema(ma.Schema):
    """One bucket with quotes: OHLC of its prices, the last quote's 24h volume."""

    bucket_start = ma.fields.String(required=True, metadata={"description": "UTC, inclusive"})
    bucket_end = ma.fields.String(required=True, metadata={"description": "UTC, exclusive"})
    open = ma.fields.String(required=True, allow_none=True, metadata=DECIMAL_DOC)
    high = ma.fields.String(required=True, allow_none=True, metadata=DECIMAL_DOC)
    low = ma.fields.String(required=True, allow_none=True, metadata=DECIMAL_DOC)
    close = ma.fields.String(required=True, allow_none=True, metadata=DECIMAL_DOC)
    volume = ma.fields.String(required=True, allow_none=True, metadata={
        **DECIMAL_DOC, "description": "24h volume of the bucket's last quote (rolling 24h)"})
    quotes = ma.fields.Integer(required=True)
    first_observed_at = ma.fields.String(required=True)
    last_observed_at = ma.fields.String(required=True)
    resolution = ma.fields.String(required=True, validate=validate.OneOf(RESOLUTIONS), metadata={
        "description": "What answered: the full rows, or the hourly or daily rollups that "
                       "replaced them past the retention horizon (docs/storage.md)"})


class GapSchema(ma.Schema):
    """A run of empty buckets: [start, end), and why they are empty."""

    start = ma.fields.String(required=True)
    end = ma.fields.String(required=True)
    reason = ma.fields.String(required=True, validate=validate.OneOf(
        [GAP_NO_QUOTES, GAP_ROLLED_UP]), metadata={"description": (
            f"`{GAP_NO_QUOTES}`: no quote was stored for these buckets; `{GAP_ROLLED_UP}`: "
            "retention keeps only daily rollups here (QUOTES_HOURLY_DAYS), which cannot "
            "answer a bucket under a day (ask for interval=1d)")})


class CandleEnvelopeSchema(EnvelopeSchema):
    """GET /data/<asset>/candles: a page of buckets, the non-empty ones and the gaps."""

    interval = ma.fields.String(required=True)
    data = ma.fields.List(ma.fields.Nested(CandleSchema), required=True)
    gaps = ma.fields.List(ma.fields.Nested(GapSchema), required=True)


class AsOfArgsSchema(ArgsSchema):
    """GET /data/<asset>/as_of."""

    at = UtcDateTime(required=True)
    source = ma.fields.String(validate=validate.OneOf(SOURCES))


def _pair(value: str) -> tuple[str, datetime]:
    asset, sep, moment = value.rpartition("@")
    if not sep or not asset.strip():
        raise ma.ValidationError("each pair must be <asset>@<ISO time>")
    return asset.strip(), UtcDateTime().deserialize(moment)


class PairField(Text):
    """`<asset id or slug>@<ISO 8601 time>`."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not 3 <= len(text) <= 300:
            raise ma.ValidationError("each pair must be 3 to 300 characters")
        return _pair(text)


class AsOfBatchArgsSchema(ArgsSchema):
    """GET /data/as_of: repeated `pair`."""

    pair = ma.fields.List(
        PairField(), required=True,
        validate=validate.Length(min=1, max=AS_OF_BATCH_MAX),
        metadata={"description": "`<asset>@<ISO time>`, repeated, at most "
                                 f"{AS_OF_BATCH_MAX}"})
    source = ma.fields.String(validate=validate.OneOf(SOURCES))


class AsOfQuoteSchema(ma.Schema):
    """A source's latest quote at or before the moment, and how old it was then."""

    source = ma.fields.String(required=True)
    source_asset_id = ma.fields.String(required=True)
    observed_at = ma.fields.String(required=True)
    price_usd = ma.fields.String(required=True, allow_none=True, metadata=DECIMAL_DOC)
    market_cap_usd = ma.fields.String(required=True, allow_none=True, metadata=DECIMAL_DOC)
    volume_24h_usd = ma.fields.String(required=True, allow_none=True, metadata=DECIMAL_DOC)
    age_seconds = ma.fields.Float(required=True,
                                  metadata={"description": "as_of minus observed_at"})
    resolution = ma.fields.String(required=True, validate=validate.OneOf(RESOLUTIONS), metadata={
        "description": "full: a stored quote; hourly or daily: past the retention horizon, "
                       "the rollup bucket's close (its open when the bucket ends after as_of)"})


class AsOfAssetSchema(AssetSchema):
    """The asset named."""


class AsOfSchema(ma.Schema):
    """GET /data/<asset>/as_of."""

    asset = ma.fields.Nested(AsOfAssetSchema, required=True)
    as_of = ma.fields.String(required=True)
    quotes = ma.fields.List(ma.fields.Nested(AsOfQuoteSchema), required=True, metadata={
        "description": "One per source with a quote at or before as_of (none before its first)"})


class AsOfItemSchema(ma.Schema):
    """One pair's answer: as GET /data/<asset>/as_of, or `error` for an unknown asset."""

    asset_ref = ma.fields.String(required=True)
    as_of = ma.fields.String(required=True)
    asset = ma.fields.Nested(AsOfAssetSchema)
    quotes = ma.fields.List(ma.fields.Nested(AsOfQuoteSchema))
    error = ma.fields.String()


class AsOfBatchSchema(ma.Schema):
    """GET /data/as_of."""

    data = ma.fields.List(ma.fields.Nested(AsOfItemSchema), required=True)
