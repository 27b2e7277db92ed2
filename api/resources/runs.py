"""GET /runs, /runs/<id>, /runs/compare: per-source ETL runs."""
from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.db import get_session
from api.http.envelope import page_window, paged
from api.schemas.common import ErrorSchema
from api.schemas.runs import (
    CompareArgsSchema,
    RunComparisonSchema,
    RunsArgsSchema,
    RunsEnvelopeSchema,
    RunSchema,
)
from shared.queries.runs import compare_runs, get_run, list_runs

blp = Blueprint("runs", __name__, url_prefix="/runs", description="ETL runs")


@blp.route("")
class RunList(MethodView):
    """Runs."""

    @blp.arguments(RunsArgsSchema, location="query")
    @blp.response(200, RunsEnvelopeSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List runs, newest first

        Filter by `source`, `status`, `job_id` and `since`/`until` (created_at); page with
        `page`/`page_size` or `cursor`.
        """
        page = list_runs(
            get_session(), source=args.get("source"), status=args.get("status"),
            job_id=args.get("job_id"), since=args.get("since"), until=args.get("until"),
            **page_window(args),
        )
        return paged(page, args)


@blp.route("/compare")
class RunCompare(MethodView):
    """Two runs side by side."""

    @blp.arguments(CompareArgsSchema, location="query")
    @blp.response(200, RunComparisonSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such run")
    def get(self, args: dict[str, Any]) -> Any:
        """Compare run `a` with run `b`: counts, durations, and per source across their jobs

        Differences are b minus a. `per_source` pairs each source's run in a's job with the
        same source's run in b's job (empty when a and b belong to one job).
        """
        return compare_runs(get_session(), args["a"], args["b"])


@blp.route("/<id:run_id>")
class RunDetail(MethodView):
    """One run."""

    @blp.response(200, RunSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such run")
    def get(self, run_id: int) -> Any:
        """Show one run: status, counts, timings, error"""
        return get_run(get_session(), run_id)
