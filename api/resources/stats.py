"""GET /stats: records per source and layer, runs, durations, checkpoints."""
from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.db import get_session
from api.schemas.stats import StatsSchema
from shared.queries.stats import collect_stats

blp = Blueprint("stats", __name__, url_prefix="/stats", description="Operational statistics")


@blp.route("")
class Stats(MethodView):
    """Statistics."""

    @blp.response(200, StatsSchema)
    def get(self) -> Any:
        """Show records per source and layer, runs by status, last outcomes, checkpoints"""
        return collect_stats(get_session())
