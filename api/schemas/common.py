"""Schemas every resource uses: fields, the base of request arguments, paging, errors, envelope.

Each resource's own schemas are in the module of its name (api/schemas/data.py serves
api/resources/data.py, and so on).
"""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import marshmallow as ma
from marshmallow import validate

from shared.errors import safe_error_text
from shared.queries.paging import BIGINT_MAX, CURSOR_MAX_LENGTH

PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500
# The `<asset>` of the /data/<asset>... routes (api.resources.data and .history).
ASSET_PARAM = {"in": "path", "name": "asset", "description": "Asset id or slug",
               "schema": {"type": "string", "minLength": 1, "maxLength": 200},
               "example": "bitcoin"}


# --- fields ------------------------------------------------------------------------------------

class DecimalString(ma.fields.Field[Decimal]):
    """An exact decimal as a plain string (no exponent, no float rounding)."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return format(Decimal(value), "f")


DECIMAL_DOC = {"type": "string", "nullable": True, "pattern": r"^-?\d+(\.\d+)?$",
               "description": "Exact decimal as a string"}


class Text(ma.fields.String):
    """A string argument that PostgreSQL can hold (no NUL characters)."""

    default_error_messages = {"nul": "Must not contain NUL characters."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        result: str = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in result:
            raise self.make_error("nul")
        return result


class UtcDateTime(ma.fields.AwareDateTime):
    """An ISO 8601 timestamp; naive values are taken as UTC; returned in UTC."""

    default_error_messages = {"range": "Timestamp out of range."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("metadata", {}).setdefault(
            "description", "ISO 8601 timestamp (UTC when no offset is given)")
        super().__init__(format="iso", default_timezone=timezone.utc, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        parsed: datetime = super()._deserialize(value, attr, data, **kwargs)
        try:
            return parsed.astimezone(timezone.utc)
        except (OverflowError, ValueError) as exc:
            raise self.make_error("range") from exc


def id_field(**kwargs: Any) -> ma.fields.Integer:
    """A database id argument (1 .. BIGINT_MAX)."""
    return ma.fields.Integer(strict=False, validate=validate.Range(min=1, max=BIGINT_MAX),
                             **kwargs)


def sort_choices(fields: tuple[str, ...]) -> list[str]:
    """The `sort` values of these fields: each ascending, and descending with a `-`."""
    return [*fields, *(f"-{f}" for f in fields)]


class SafeErrorText(ma.fields.String):
    """A stored error served without SQL, parameters, paths or secrets, and capped.

    New rows are written short and safe (shared.errors.public_error); this scrubs rows written
    before that, on the way out.
    """

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        text = super()._serialize(value, attr, obj, **kwargs)
        return safe_error_text(text) if isinstance(text, str) else text


# --- request arguments -------------------------------------------------------------------------

def _string_keys(messages: Any) -> Any:
    """Error messages with every dict key a string (marshmallow keys list items by int)."""
    if isinstance(messages, dict):
        return {str(key): _string_keys(value) for key, value in messages.items()}
    if isinstance(messages, list):
        return [_string_keys(item) for item in messages]
    return messages


class ArgsSchema(ma.Schema):
    """Base of every request schema: error keys are strings.

    marshmallow keys a list item's errors by its index (an int); next to a string key such
    as `_schema`, Flask's JSON encoder (which sorts keys) raised TypeError and the 422 became
    a 500 (`POST /jobs {"sources": ["csv", "csv", "x"]}`).
    """

    def handle_error(self, error: ma.ValidationError, data: Any, **kwargs: Any) -> None:
        """Re-raise with string keys throughout."""
        raise ma.ValidationError(_string_keys(error.messages), data=error.data,
                                 valid_data=error.valid_data) from error


class PageArgsSchema(ArgsSchema):
    """Page-number paging, or keyset paging with the opaque `cursor` of the previous page."""

    page = ma.fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000),
                             metadata={"description": "Page number (ignored with `cursor`)"})
    page_size = ma.fields.Integer(
        load_default=PAGE_SIZE_DEFAULT,
        validate=validate.Range(min=1, max=PAGE_SIZE_MAX),
    )
    cursor = Text(validate=validate.Length(min=1, max=CURSOR_MAX_LENGTH),
                  metadata={"description": "`pagination.next_cursor` of the previous page"})


class TimeRangeMixin(ArgsSchema):
    """`since`/`until` bounds, inclusive, with `since` not after `until`."""

    since = UtcDateTime()
    until = UtcDateTime()

    @ma.validates_schema
    def _ordered(self, data: dict[str, Any], **_: Any) -> None:
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            raise ma.ValidationError("until must not be before since", field_name="until")


# --- response bodies ---------------------------------------------------------------------------

class ErrorSchema(ma.Schema):
    """The body of every non-2xx response."""

    code = ma.fields.Integer(required=True, metadata={"description": "HTTP status code"})
    status = ma.fields.String(required=True, metadata={"description": "HTTP status name"})
    message = ma.fields.String(metadata={"description": "What went wrong"})
    errors = ma.fields.Dict(metadata={"description": "Validation errors by location and field"})


class PaginationSchema(ma.Schema):
    """Where this page sits in the result, and the cursor of the next page."""

    page = ma.fields.Integer(required=True, allow_none=True,
                             metadata={"description": "null when paging by cursor"})
    page_size = ma.fields.Integer(required=True)
    total = ma.fields.Integer(required=True)
    total_pages = ma.fields.Integer(required=True)
    next_cursor = ma.fields.String(
        required=True, allow_none=True,
        metadata={"description": "Pass as `cursor` for the next page; null on the last page"})


class EnvelopeSchema(ma.Schema):
    """The body of every list endpoint."""

    request_id = ma.fields.String(required=True)
    api_latency_ms = ma.fields.Float(required=True)
    pagination = ma.fields.Nested(PaginationSchema, required=True)


class AssetSchema(ma.Schema):
    """A canonical asset."""

    id = ma.fields.Integer(required=True)
    slug = ma.fields.String(required=True)
    symbol = ma.fields.String(required=True)
    name = ma.fields.String(required=True)
