"""GET /data: the current unified record per asset and source."""
from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.db import get_session
from api.envelope import envelope
from api.schemas import DataArgsSchema, DataEnvelopeSchema
from shared.queries import list_current_quotes

blp = Blueprint("data", __name__, url_prefix="/data", description="Unified market data")


@blp.route("")
class DataList(MethodView):
    """Current records."""

    @blp.arguments(DataArgsSchema, location="query")
    @blp.response(200, DataEnvelopeSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List the current record per asset and source

        Filter by `source` and `symbol`; page with `page` and `page_size`.
        """
        page, page_size = args["page"], args["page_size"]
        rows, total = list_current_quotes(
            get_session(), source=args.get("source"), symbol=args.get("symbol"),
            offset=(page - 1) * page_size, limit=page_size,
        )
        return envelope(rows, page, page_size, total)
