"""Schemas of the quality flags served with quotes, and of the consensus window."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from shared.quality.checks import FLAG_KINDS


def quality_out(stored: Any) -> dict[str, Any]:
    """The served `quality` of a quote from its stored value (None = clean: no row stored)."""
    if not stored or not stored.get("flags"):
        return {"status": "ok", "flags": []}
    return {"status": "flagged", "flags": list(stored.get("flags", []))}


class FlagSchema(ma.Schema):
    """One quality flag: its kind, why, and the numbers behind it (with the rule)."""

    flag = ma.fields.String(required=True, validate=validate.OneOf(FLAG_KINDS))
    reason = ma.fields.String(required=True)
    evidence = ma.fields.Dict(required=True, metadata={
        "description": "Values, baseline and threshold the check compared, and its `rule`"})


class QualitySchema(ma.Schema):
    """A quote's quality: `ok` with no flags, or `flagged` with each flag and its reason."""

    status = ma.fields.String(required=True, validate=validate.OneOf(("ok", "flagged")))
    flags = ma.fields.List(ma.fields.Nested(FlagSchema), required=True)


class QualityField(ma.fields.Nested):
    """A stored quality value (None when clean) served as QualitySchema."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", True)
        super().__init__(QualitySchema, **kwargs)

    # marshmallow names the first argument differently in Field and Nested: either name breaks
    # one of the two signatures for mypy.
    def _serialize(self, nested_obj: Any, attr: Any, obj: Any,  # type: ignore[override]
                   **kwargs: Any) -> Any:
        return quality_out(nested_obj)


class WindowSchema(ma.Schema):
    """The consensus window: it ends at the freshest clean quote and spans `seconds` back."""

    seconds = ma.fields.Integer(required=True)
    start = ma.fields.String(required=True, allow_none=True,
                             metadata={"description": "ISO 8601; null without a clean quote"})
    end = ma.fields.String(required=True, allow_none=True,
                           metadata={"description": "ISO 8601; null without a clean quote"})


class ExcludedSchema(ma.Schema):
    """A source left out of the consensus, and why."""

    source = ma.fields.String(required=True)
    reason = ma.fields.String(required=True, validate=validate.OneOf(
        ("out_of_window", "flagged", "no_price")))
    observed_at = ma.fields.String(required=True, allow_none=True)
    detail = ma.fields.String(required=True)
