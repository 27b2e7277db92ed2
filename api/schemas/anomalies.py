"""Request and response schemas of GET /anomalies."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from api.schemas.common import AssetSchema, EnvelopeSchema, PageArgsSchema, Text, UtcDateTime
from shared.quality.anomalies import RUN_KINDS
from shared.config import SOURCES
from shared.quality.checks import FLAG_KINDS
from shared.queries.paging import BIGINT_MAX

ANOMALY_KINDS: tuple[str, ...] = RUN_KINDS + FLAG_KINDS


def check_asset_ref(value: str) -> None:
    """An asset reference names something: not blank, no control character, an id fits BIGINT."""
    ref = value.strip()
    if not ref:
        raise ma.ValidationError("Must not be blank.")
    if any(ord(c) < 32 or ord(c) == 127 for c in ref):
        raise ma.ValidationError("Must not contain control characters.")
    if ref.isdigit() and ref.isascii() and not 1 <= int(ref) <= BIGINT_MAX:
        raise ma.ValidationError(f"An asset id is between 1 and {BIGINT_MAX}.")


class AnomaliesArgsSchema(PageArgsSchema):
    """Filters and paging of GET /anomalies."""

    source = ma.fields.String(validate=validate.OneOf(SOURCES))
    kind = ma.fields.String(validate=validate.OneOf(ANOMALY_KINDS))
    since = UtcDateTime(metadata={"description": "Recorded at or after (ISO 8601)"})
    asset = Text(validate=[validate.Length(min=1, max=200), check_asset_ref], metadata={
        "description": "Only anomalies about this asset: its id, else its exact slug, else "
                       "every asset with this symbol (any case), else its slug in any case; "
                       "404 when none"})


class AnomalyAssetSchema(AssetSchema):
    """The asset a data anomaly is about, as stored now."""


class AnomalySchema(ma.Schema):
    """One anomaly: what, where, about which run or quote (and coin), and the evidence."""

    id = ma.fields.Integer(required=True)
    kind = ma.fields.String(required=True, validate=validate.OneOf(ANOMALY_KINDS))
    source = ma.fields.String(required=True)
    key = ma.fields.String(required=True, metadata={
        "description": "What it is about: `run:<id>`, `drift:<id>` or "
                       "`quote:<asset_id>:<observed_at>`"})
    run_id = ma.fields.Integer(required=True, allow_none=True)
    observed_at = ma.fields.DateTime(format="iso", required=True, allow_none=True)
    asset = ma.fields.Nested(AnomalyAssetSchema, required=True, allow_none=True, metadata={
        "description": "The coin of a data anomaly (null for a run anomaly)"})
    source_asset_id = ma.fields.String(required=True, allow_none=True, metadata={
        "description": "The flagged quote's id of the coin at `source` (null for a run "
                       "anomaly)"})
    evidence = ma.fields.Dict(required=True, metadata={
        "description": "The value, its baseline and the rule it broke"})
    created_at = ma.fields.DateTime(format="iso", required=True)


class AnomaliesEnvelopeSchema(EnvelopeSchema):
    """GET /anomalies."""

    data = ma.fields.List(ma.fields.Nested(AnomalySchema), required=True)
