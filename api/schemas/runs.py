"""Request and response schemas of GET /runs and /runs/compare (api.resources.runs)."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from api.schemas.common import (
    ArgsSchema,
    EnvelopeSchema,
    PageArgsSchema,
    SafeErrorText,
    TimeRangeMixin,
    id_field,
)
from shared.config import SOURCES
from shared.models import RUN_KINDS, RUN_STATUSES
from shared.queries.runs import run_duration_ms


class RunsArgsSchema(PageArgsSchema, TimeRangeMixin):
    """Filters and paging of GET /runs (`since`/`until` bound `created_at`)."""

    source = ma.fields.String(validate=validate.OneOf(SOURCES))
    status = ma.fields.String(validate=validate.OneOf(RUN_STATUSES))
    job_id = id_field()


class CompareArgsSchema(ArgsSchema):
    """The two runs of GET /runs/compare."""

    a = id_field(required=True)
    b = id_field(required=True)


class RunCountersSchema(ma.Schema):
    """The counters of a run (shared.queries.runs.COMPARED_COUNTERS), as values or differences."""

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
    kind = ma.fields.String(required=True, validate=validate.OneOf(RUN_KINDS), metadata={
        "description": "`extract` (the source's current data) or `backfill` (a backfill's "
                       "history, GET /backfills)"})
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
