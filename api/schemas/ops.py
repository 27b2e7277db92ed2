"""Response bodies of the operations endpoints: jobs, runs, stats and health."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from api.schemas.common import EnvelopeSchema
from api.http.security import SafeErrorText
from shared.models import RUN_STATUSES
from shared.queries.runs import run_duration_ms


class JobAcceptedSchema(ma.Schema):
    """POST /jobs answer."""

    id = ma.fields.Integer(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(RUN_STATUSES))
    sources = ma.fields.List(ma.fields.String(), required=True)
    status_url = ma.fields.String(required=True)


class RunCountersSchema(ma.Schema):
    """The counters of a run (shared.queries.runs.RUN_COUNTERS), as values or as differences."""

    fetched = ma.fields.Integer(required=True)
    inserted = ma.fields.Integer(required=True)
    unchanged = ma.fields.Integer(required=True)
    rejected = ma.fields.Integer(required=True)
    raw_inserted = ma.fields.Integer(required=True)
    http_requests = ma.fields.Integer(required=True)
    http_retries = ma.fields.Integer(required=True)
    rate_limit_waits = ma.fields.Integer(required=True)
    attempts = ma.fields.Integer(required=True)


class RunSchema(RunCountersSchema):
    """One source's run inside a job."""

    id = ma.fields.Integer(required=True)
    job_id = ma.fields.Integer(required=True)
    source = ma.fields.String(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(RUN_STATUSES))
    celery_task_id = ma.fields.String(allow_none=True)
    error = SafeErrorText(allow_none=True)
    created_at = ma.fields.DateTime(format="iso", required=True)
    started_at = ma.fields.DateTime(format="iso", allow_none=True)
    finished_at = ma.fields.DateTime(format="iso", allow_none=True)
    duration_ms = ma.fields.Method("_duration_ms", dump_only=True, allow_none=True,
                                   metadata={"type": "number", "nullable": True})

    def _duration_ms(self, run: Any) -> float | None:
        return run_duration_ms(run)


class RunsEnvelopeSchema(EnvelopeSchema):
    """GET /runs."""

    data = ma.fields.List(ma.fields.Nested(RunSchema), required=True)


class RunDifferenceSchema(RunCountersSchema):
    """Run b minus run a, counter by counter."""

    duration_ms = ma.fields.Float(required=True, allow_none=True)


class SourceComparisonSchema(ma.Schema):
    """One source's runs in the jobs of a and b."""

    source = ma.fields.String(required=True)
    a = ma.fields.Nested(RunSchema, required=True, allow_none=True)
    b = ma.fields.Nested(RunSchema, required=True, allow_none=True)
    difference = ma.fields.Nested(RunDifferenceSchema, required=True, allow_none=True)


class RunComparisonSchema(ma.Schema):
    """GET /runs/compare."""

    a = ma.fields.Nested(RunSchema, required=True)
    b = ma.fields.Nested(RunSchema, required=True)
    same_source = ma.fields.Boolean(required=True)
    same_job = ma.fields.Boolean(required=True,
                                 metadata={"description": "a and b belong to one job"})
    job_a = ma.fields.Integer(required=True)
    job_b = ma.fields.Integer(required=True)
    difference = ma.fields.Nested(RunDifferenceSchema, required=True)
    per_source = ma.fields.List(
        ma.fields.Nested(SourceComparisonSchema), required=True,
        metadata={"description": "Each source's run in job_a against the same source's run "
                                 "in job_b; empty when both runs belong to one job"})


class JobSchema(ma.Schema):
    """A job with each source's run."""

    id = ma.fields.Integer(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(RUN_STATUSES))
    sources = ma.fields.List(ma.fields.String(), required=True)
    trigger = ma.fields.String(required=True)
    error = SafeErrorText(allow_none=True)
    created_at = ma.fields.DateTime(format="iso", required=True)
    started_at = ma.fields.DateTime(format="iso", allow_none=True)
    finished_at = ma.fields.DateTime(format="iso", allow_none=True)
    runs = ma.fields.List(ma.fields.Nested(RunSchema), required=True)


class JobsEnvelopeSchema(EnvelopeSchema):
    """GET /jobs."""

    data = ma.fields.List(ma.fields.Nested(JobSchema), required=True)


class RunRefSchema(ma.Schema):
    """A pointer to a finished run."""

    run_id = ma.fields.Integer(required=True)
    status = ma.fields.String(required=True)
    finished_at = ma.fields.DateTime(format="iso", required=True)
    error = SafeErrorText(allow_none=True)


def _counts() -> ma.fields.Dict:
    return ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(), required=True)


class RejectReasonSchema(ma.Schema):
    """How often one reject reason occurred."""

    reason = ma.fields.String(required=True)
    count = ma.fields.Integer(required=True)


class SourceStatsSchema(ma.Schema):
    """One source's records per layer, runs, last outcomes and average duration."""

    source = ma.fields.String(required=True)
    records = _counts()
    runs_by_status = _counts()
    last_success = ma.fields.Nested(RunRefSchema, required=True, allow_none=True)
    last_failure = ma.fields.Nested(RunRefSchema, required=True, allow_none=True)
    average_duration_ms = ma.fields.Float(required=True, allow_none=True,
                                          metadata={"description": "Of succeeded runs"})
    top_reject_reasons = ma.fields.List(ma.fields.Nested(RejectReasonSchema), required=True)
    drift = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(), required=True,
                           metadata={"description": "Schema-drift events, mapped and unmapped"})
    anomalies = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(),
                               required=True,
                               metadata={"description": "Anomalies recorded, per kind "
                                                        "(GET /anomalies lists them)"})


class DriftEventSchema(ma.Schema):
    """A change of an upstream's shape."""

    id = ma.fields.Integer(required=True)
    source = ma.fields.String(required=True)
    run_id = ma.fields.Integer(allow_none=True)
    location = ma.fields.String(required=True)
    kind = ma.fields.String(required=True)
    field = ma.fields.String(required=True)
    observed = ma.fields.String(allow_none=True)
    confidence = ma.fields.Float(required=True)
    mapped = ma.fields.Boolean(required=True)
    detail = ma.fields.String(required=True)
    created_at = ma.fields.DateTime(format="iso", required=True)


class CheckpointSchema(ma.Schema):
    """A source's cursor."""

    source = ma.fields.String(required=True)
    key = ma.fields.String(required=True)
    value = ma.fields.Dict(required=True)
    run_id = ma.fields.Integer(allow_none=True)
    updated_at = ma.fields.DateTime(format="iso", required=True)


class NotificationSchema(ma.Schema):
    """One notification as recorded (the target's name, never its URL)."""

    id = ma.fields.Integer(required=True)
    source = ma.fields.String(required=True)
    event = ma.fields.String(required=True)
    state = ma.fields.String(required=True)
    severity = ma.fields.String(required=True)
    target = ma.fields.String(required=True)
    status = ma.fields.String(required=True, metadata={"description": "pending, sent or failed"})
    run_id = ma.fields.Integer(allow_none=True)
    job_id = ma.fields.Integer(allow_none=True)
    detail = SafeErrorText(allow_none=True)
    attempts = ma.fields.Integer(required=True)
    error = SafeErrorText(allow_none=True, metadata={"description": "why the last send failed"})
    created_at = ma.fields.DateTime(required=True)
    sent_at = ma.fields.DateTime(allow_none=True)


class NotificationStatsSchema(ma.Schema):
    """Notifications of the last 24 hours and the newest ones."""

    last_24h = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(), required=True,
                              metadata={"description": "status -> notifications created"})
    by_target_24h = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer()),
        required=True, metadata={"description": "target -> status -> count"})
    recent = ma.fields.List(ma.fields.Nested(NotificationSchema), required=True)


class StatsSchema(ma.Schema):
    """GET /stats."""

    totals = _counts()
    records = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer()),
        required=True, metadata={"description": "layer -> source -> count (see `layers`)"})
    layers = ma.fields.Dict(
        keys=ma.fields.String(), values=ma.fields.String(), required=True,
        metadata={"description": "layer -> what it counts, per source and in `totals`"})
    runs_by_status = _counts()
    sources = ma.fields.List(ma.fields.Nested(SourceStatsSchema), required=True)
    checkpoints = ma.fields.List(ma.fields.Nested(CheckpointSchema), required=True)
    recent_drift = ma.fields.List(ma.fields.Nested(DriftEventSchema), required=True)
    notifications = ma.fields.Nested(NotificationStatsSchema, required=True)


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


class HealthSchema(ma.Schema):
    """Health answer: overall status and each check."""

    status = ma.fields.String(required=True, validate=validate.OneOf(("ok", "degraded", "down")))
    checks = ma.fields.Nested(HealthChecksSchema, required=True)


class LiveSchema(ma.Schema):
    """Liveness answer."""

    status = ma.fields.String(required=True, validate=validate.OneOf(("ok",)))
