"""Request and response schemas of GET /anomalies."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from api.schemas import EnvelopeSchema, PageArgsSchema, UtcDateTime
from shared.anomalies import RUN_KINDS
from shared.config import SOURCES
from shared.quality import FLAG_KINDS

ANOMALY_KINDS: tuple[str, ...] = RUN_KINDS + FLAG_KINDS


class AnomaliesArgsSchema(PageArgsSchema):
    """Filters and paging of GET /anomalies."""

    source = ma.fields.String(validate=validate.OneOf(SOURCES))
    kind = ma.fields.String(validate=validate.OneOf(ANOMALY_KINDS))
    since = UtcDateTime(metadata={"description": "Recorded at or after (ISO 8601)"})


class AnomalySchema(ma.Schema):
    """One anomaly: what, where, about which run or quote, and the evidence."""

    id = ma.fields.Integer(required=True)
    kind = ma.fields.String(required=True, validate=validate.OneOf(ANOMALY_KINDS))
    source = ma.fields.String(required=True)
    key = ma.fields.String(required=True, metadata={
        "description": "What it is about: `run:<id>`, `drift:<id>` or "
                       "`quote:<asset_id>:<observed_at>`"})
    run_id = ma.fields.Integer(required=True, allow_none=True)
    observed_at = ma.fields.DateTime(format="iso", required=True, allow_none=True)
    evidence = ma.fields.Dict(required=True, metadata={
        "description": "The value, its baseline and the rule it broke"})
    created_at = ma.fields.DateTime(format="iso", required=True)


class AnomaliesEnvelopeSchema(EnvelopeSchema):
    """GET /anomalies."""

    data = ma.fields.List(ma.fields.Nested(AnomalySchema), required=True)
