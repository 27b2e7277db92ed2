"""GET /raw/<source> and /raw/<source>/<id>: stored raw payloads."""
from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.db import get_session
from api.http.envelope import page_window, paged
from api.schemas.common import ErrorSchema
from api.schemas.raw import RawArgsSchema, RawEnvelopeSchema, RawRecordSchema
from shared.config import SOURCES
from shared.queries.raw import get_raw_record, list_raw_records

blp = Blueprint("raw", __name__, url_prefix="/raw", description="Raw records as received")

SOURCE_PARAM = {"in": "path", "name": "source", "description": "Source name (others: 404)",
                "schema": {"type": "string", "enum": list(SOURCES)}}


@blp.route("/<string:source>", parameters=[SOURCE_PARAM])
class RawList(MethodView):
    """A source's raw records."""

    @blp.arguments(RawArgsSchema, location="query")
    @blp.response(200, RawEnvelopeSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="Unknown source")
    def get(self, args: dict[str, Any], source: str) -> dict[str, Any]:
        """List a source's raw records, newest first

        Filter by `run_id`; page with `page`/`page_size` or `cursor`.
        """
        page = list_raw_records(get_session(), source, run_id=args.get("run_id"),
                                **page_window(args))
        return paged(page, args)


@blp.route("/<string:source>/<id:record_id>", parameters=[SOURCE_PARAM])
class RawDetail(MethodView):
    """One raw record."""

    @blp.response(200, RawRecordSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="Unknown source or record")
    def get(self, source: str, record_id: int) -> Any:
        """Show one raw record with its payload exactly as received"""
        return get_raw_record(get_session(), source, record_id)
