"""Request and response schemas of /jobs (api.resources.jobs)."""
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
)
from api.schemas.runs import RunSchema
from shared.config import SOURCES
from shared.models import RUN_STATUSES
from shared.queries.jobs import JOB_TRIGGERS


class JobsArgsSchema(PageArgsSchema, TimeRangeMixin):
    """Filters and paging of GET /jobs (`since`/`until` bound `created_at`)."""

    status = ma.fields.String(validate=validate.OneOf(RUN_STATUSES))
    trigger = ma.fields.String(validate=validate.OneOf(JOB_TRIGGERS),
                               metadata={"description": "What queued the job"})


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


class JobAcceptedSchema(ma.Schema):
    """POST /jobs answer."""

    id = ma.fields.Integer(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(RUN_STATUSES))
    sources = ma.fields.List(ma.fields.String(), required=True)
    status_url = ma.fields.String(required=True)


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
