"""GET /anomalies: run anomalies (counts, durations, failure streaks, drift) and flagged quotes."""
from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.schemas.anomalies import AnomaliesArgsSchema, AnomaliesEnvelopeSchema
from api.db import get_session
from api.http.envelope import page_window, paged
from api.schemas.common import ErrorSchema
from shared.queries.anomalies import list_anomalies

blp = Blueprint("anomalies", __name__, url_prefix="/anomalies",
                description="Run and data anomalies, each with its evidence")


@blp.route("")
class AnomalyList(MethodView):
    """Anomalies."""

    @blp.arguments(AnomaliesArgsSchema, location="query")
    @blp.response(200, AnomaliesEnvelopeSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No asset by that id, slug or symbol")
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List anomalies, newest first

        Filter by `source`, `kind`, `since` (when recorded) and `asset` (id, slug or symbol);
        page with `page`/`page_size` or `cursor`. Each carries its evidence: the value, the
        baseline and the rule; a data anomaly also its coin (`asset`: id, slug, symbol, name)
        and the coin's id at the source (`source_asset_id`).
        """
        page = list_anomalies(get_session(), source=args.get("source"), kind=args.get("kind"),
                              since=args.get("since"), asset=args.get("asset"),
                              **page_window(args))
        return paged(page, args)
