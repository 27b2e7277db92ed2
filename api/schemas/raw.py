"""Request and response schemas of GET /raw/<source> (api.resources.raw)."""
from __future__ import annotations

from typing import Any

import marshmallow as ma

from api.schemas.common import EnvelopeSchema, PageArgsSchema, id_field


class RawArgsSchema(PageArgsSchema):
    """Filters and paging of GET /raw/<source>."""

    run_id = id_field()


class RawRecordSchema(ma.Schema):
    """A record exactly as it was received."""

    id = ma.fields.Integer(required=True)
    source = ma.fields.String(required=True)
    source_key = ma.fields.String(required=True)
    payload = ma.fields.String(required=True)
    fetched_at = ma.fields.DateTime(format="iso", required=True)
    run_id = ma.fields.Integer(allow_none=True)
    content_hash = ma.fields.Method("_hex", required=True, metadata={"type": "string"})

    def _hex(self, record: Any) -> str:
        return bytes(record.content_hash).hex()


class RawEnvelopeSchema(EnvelopeSchema):
    """GET /raw/<source>."""

    data = ma.fields.List(ma.fields.Nested(RawRecordSchema), required=True)
