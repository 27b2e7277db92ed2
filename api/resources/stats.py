"""GET /stats: records per source and layer, runs, durations, checkpoints, storage."""
from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from api.db import get_session
from api.schemas.stats import StatsSchema
from shared.queries.stats import collect_stats
from shared.storage import counters
from shared.storage.usage import storage_figures

blp = Blueprint("stats", __name__, url_prefix="/stats", description="Operational statistics")


@blp.route("")
class Stats(MethodView):
    """Statistics."""

    @blp.response(200, StatsSchema)
    def get(self) -> Any:
        """Show records per source and layer, runs by status, last outcomes, checkpoints,
        storage (bytes per table and partition, per quote, growth per day, days left)

        Every count is kept by the writers in their own transactions (exact); storage figures
        are catalog reads: the answer costs the same at any amount of history.
        """
        session = get_session()
        kept = counters.totals(session)
        return {**collect_stats(session, kept),
                "storage": storage_figures(session, current_app.config["SETTINGS"], kept)}
