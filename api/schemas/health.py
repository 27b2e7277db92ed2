"""Response schemas of GET /health and /health/live (api.resources.health)."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from api.schemas.common import SafeErrorText
from api.schemas.replicas import ReplicasCheckSchema


class CheckSchema(ma.Schema):
    """One health check."""

    ok = ma.fields.Boolean(required=True)
    latency_ms = ma.fields.Float()
    error = SafeErrorText()


class WorkersCheckSchema(CheckSchema):
    """Live Celery workers that answered a ping (count and names unless the ping failed)."""

    count = ma.fields.Integer()
    names = ma.fields.List(ma.fields.String())


class SourceFreshnessSchema(ma.Schema):
    """A source's state against its freshness objective (shared.queries.freshness)."""

    fresh = ma.fields.Boolean(required=True)
    state = ma.fields.String(validate=validate.OneOf(("fresh", "stale", "failing")))
    objective_seconds = ma.fields.Integer()
    last_success_at = ma.fields.DateTime(format="iso", required=True, allow_none=True)
    age_seconds = ma.fields.Float(required=True, allow_none=True)
    consecutive_failures = ma.fields.Integer()
    last_error = SafeErrorText(allow_none=True)
    last_error_run_id = ma.fields.Integer(allow_none=True)
    next_run_at = ma.fields.DateTime(format="iso", allow_none=True)


class FreshnessCheckSchema(CheckSchema):
    """Every enabled source succeeded within max_age_seconds (details unless it failed)."""

    max_age_seconds = ma.fields.Integer()
    sources = ma.fields.Dict(keys=ma.fields.String(),
                             values=ma.fields.Nested(SourceFreshnessSchema))


class HealthChecksSchema(ma.Schema):
    """Every check of GET /health (workers and freshness only when they could run)."""

    database = ma.fields.Nested(CheckSchema, required=True)
    broker = ma.fields.Nested(CheckSchema, required=True)
    workers = ma.fields.Nested(WorkersCheckSchema)
    freshness = ma.fields.Nested(FreshnessCheckSchema)
    replicas = ma.fields.Nested(ReplicasCheckSchema)


class HealthSchema(ma.Schema):
    """Health answer: overall status and each check."""

    status = ma.fields.String(required=True, validate=validate.OneOf(("ok", "degraded", "down")))
    checks = ma.fields.Nested(HealthChecksSchema, required=True)


class LiveSchema(ma.Schema):
    """Liveness answer."""

    status = ma.fields.String(required=True, validate=validate.OneOf(("ok",)))
