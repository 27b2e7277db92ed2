"""Request and response schemas of /backfills."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from api.schemas.common import ArgsSchema, UtcDateTime
from shared.backfill.request import SOURCES, TOP_MAX


class BackfillRequestSchema(ArgsSchema):
    """POST /backfills body: a source, coins (ids or top N), a range, optionally a dry run."""

    class Meta:
        unknown = ma.RAISE

    source = ma.fields.String(required=True, validate=validate.OneOf(SOURCES))
    assets = ma.fields.List(
        ma.fields.String(validate=validate.Length(min=1, max=300)),
        validate=validate.Length(min=1, max=TOP_MAX),
        metadata={"description": "CoinGecko coin ids (already seen by a CoinGecko run)"})
    top = ma.fields.Integer(strict=True, validate=validate.Range(min=1, max=TOP_MAX),
                            metadata={"description": "Or the top N coins by market cap rank"})
    since = UtcDateTime(required=True)
    until = UtcDateTime(metadata={"description": "Default and at most: now"})
    chunk_days = ma.fields.Integer(strict=True, validate=validate.Range(min=1, max=3650),
                                   metadata={"description": "Days per chunk (request); "
                                             "default BACKFILL_CHUNK_DAYS"})
    dry_run = ma.fields.Boolean(load_default=False)

    @ma.validates_schema
    def _one_selector(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("assets" in data) == ("top" in data):
            raise ma.ValidationError("give exactly one of assets or top", field_name="assets")


class ChunkSchema(ma.Schema):
    """One chunk: a coin and a time window, its state and counts."""

    id = ma.fields.Integer()
    coin_id = ma.fields.String()
    window_start = UtcDateTime()
    window_end = UtcDateTime()
    granularity_seconds = ma.fields.Integer()
    status = ma.fields.String(metadata={"description": "pending, running, done or failed"})
    attempts = ma.fields.Integer()
    points = ma.fields.Integer()
    inserted = ma.fields.Integer()
    error = ma.fields.String(allow_none=True)


class BackfillSchema(ma.Schema):
    """A backfill with its progress per chunk."""

    id = ma.fields.Integer()
    source = ma.fields.String()
    status = ma.fields.String(metadata={"description": "queued, running, succeeded, partial "
                                        "or failed"})
    job_id = ma.fields.Integer()
    run_id = ma.fields.Integer()
    assets = ma.fields.List(ma.fields.Dict())
    since = UtcDateTime()
    until = UtcDateTime()
    chunk_days = ma.fields.Integer()
    error = ma.fields.String(allow_none=True)
    created_at = UtcDateTime()
    started_at = UtcDateTime(allow_none=True)
    finished_at = UtcDateTime(allow_none=True)
    chunk_counts = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer())
    points = ma.fields.Integer()
    inserted = ma.fields.Integer()
    chunks = ma.fields.List(ma.fields.Nested(ChunkSchema))
    status_url = ma.fields.String()


class DryRunSchema(ma.Schema):
    """What a backfill would cost: chunks (one request each) and time under the quota."""

    dry_run = ma.fields.Boolean()
    source = ma.fields.String()
    assets = ma.fields.List(ma.fields.Dict())
    since = UtcDateTime()
    until = UtcDateTime()
    chunk_days = ma.fields.Integer()
    chunks = ma.fields.Integer()
    granularity_seconds = ma.fields.List(ma.fields.Integer())
    requests = ma.fields.Integer()
    estimated_seconds = ma.fields.Integer()
    quota = ma.fields.Dict()
