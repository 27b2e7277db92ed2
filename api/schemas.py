"""Marshmallow schemas: request arguments and response bodies of every endpoint."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import marshmallow as ma
from marshmallow import validate

from shared.config import SOURCES
from shared.models import RUN_STATUSES

PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500


class DecimalString(ma.fields.Field):
    """An exact decimal as a plain string (no exponent, no float rounding)."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return format(Decimal(value), "f")


DECIMAL_DOC = {"type": "string", "nullable": True, "pattern": r"^-?\d+(\.\d+)?$",
               "description": "Exact decimal as a string"}


class PageArgsSchema(ma.Schema):
    """Page-number paging."""

    page = ma.fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    page_size = ma.fields.Integer(
        load_default=PAGE_SIZE_DEFAULT, validate=validate.Range(min=1, max=PAGE_SIZE_MAX)
    )


class DataArgsSchema(PageArgsSchema):
    """Filters of GET /data."""

    source = ma.fields.String(validate=validate.OneOf(SOURCES))
    symbol = ma.fields.String(validate=validate.Length(min=1, max=64))


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


class PaginationSchema(ma.Schema):
    """Where this page sits in the result."""

    page = ma.fields.Integer(required=True)
    page_size = ma.fields.Integer(required=True)
    total = ma.fields.Integer(required=True)
    total_pages = ma.fields.Integer(required=True)


class EnvelopeSchema(ma.Schema):
    """The body of every list endpoint."""

    request_id = ma.fields.String(required=True)
    api_latency_ms = ma.fields.Float(required=True)
    pagination = ma.fields.Nested(PaginationSchema, required=True)


class DataEnvelopeSchema(EnvelopeSchema):
    """GET /data."""

    data = ma.fields.List(ma.fields.Nested(QuoteRecordSchema), required=True)


class JobRequestSchema(ma.Schema):
    """POST /jobs body: which sources to run (default: all configured)."""

    class Meta:
        unknown = ma.RAISE

    sources = ma.fields.List(
        ma.fields.String(validate=validate.OneOf(SOURCES)),
        validate=validate.Length(min=1, max=len(SOURCES)),
    )

    @ma.validates("sources")
    def _unique(self, value: list[str], **_: Any) -> None:
        if len(set(value)) != len(value):
            raise ma.ValidationError("sources must not repeat")


class JobAcceptedSchema(ma.Schema):
    """POST /jobs answer."""

    id = ma.fields.Integer(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(RUN_STATUSES))
    sources = ma.fields.List(ma.fields.String(), required=True)
    status_url = ma.fields.String(required=True)


class RunSchema(ma.Schema):
    """One source's run inside a job."""

    id = ma.fields.Integer(required=True)
    job_id = ma.fields.Integer(required=True)
    source = ma.fields.String(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(RUN_STATUSES))
    fetched = ma.fields.Integer(required=True)
    inserted = ma.fields.Integer(required=True)
    unchanged = ma.fields.Integer(required=True)
    rejected = ma.fields.Integer(required=True)
    raw_inserted = ma.fields.Integer(required=True)
    http_requests = ma.fields.Integer(required=True)
    http_retries = ma.fields.Integer(required=True)
    rate_limit_waits = ma.fields.Integer(required=True)
    attempts = ma.fields.Integer(required=True)
    celery_task_id = ma.fields.String(allow_none=True)
    error = ma.fields.String(allow_none=True)
    created_at = ma.fields.DateTime(format="iso", required=True)
    started_at = ma.fields.DateTime(format="iso", allow_none=True)
    finished_at = ma.fields.DateTime(format="iso", allow_none=True)
    duration_ms = ma.fields.Method("_duration_ms", dump_only=True, allow_none=True,
                                   metadata={"type": "number", "nullable": True})

    def _duration_ms(self, run: Any) -> float | None:
        if run.started_at and run.finished_at:
            return round((run.finished_at - run.started_at).total_seconds() * 1000, 1)
        return None


class JobSchema(ma.Schema):
    """A job with each source's run."""

    id = ma.fields.Integer(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(RUN_STATUSES))
    sources = ma.fields.List(ma.fields.String(), required=True)
    trigger = ma.fields.String(required=True)
    error = ma.fields.String(allow_none=True)
    created_at = ma.fields.DateTime(format="iso", required=True)
    started_at = ma.fields.DateTime(format="iso", allow_none=True)
    finished_at = ma.fields.DateTime(format="iso", allow_none=True)
    runs = ma.fields.List(ma.fields.Nested(RunSchema), required=True)


class HealthSchema(ma.Schema):
    """Health answer: overall status and each check."""

    status = ma.fields.String(required=True, validate=validate.OneOf(("ok", "degraded", "down")))
    checks = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Dict(), required=True)
