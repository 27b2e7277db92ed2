"""GET /data (current records), /data/<asset> (all sources + consensus), /data/<asset>/history."""
from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from api.db import get_session
from api.envelope import page_window, paged
from api.schemas import (
    AssetDetailSchema,
    DataArgsSchema,
    DataEnvelopeSchema,
    ErrorSchema,
    HistoryArgsSchema,
    HistoryEnvelopeSchema,
)
from shared.queries import DataFilters, asset_detail, asset_history, list_current_quotes

blp = Blueprint("data", __name__, url_prefix="/data", description="Unified market data")

ASSET_PARAM = {"in": "path", "name": "asset", "description": "Asset id or slug",
               "schema": {"type": "string", "minLength": 1, "maxLength": 200},
               "example": "bitcoin"}


@blp.route("")
class DataList(MethodView):
    """Current records."""

    @blp.arguments(DataArgsSchema, location="query")
    @blp.response(200, DataEnvelopeSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List the current record per asset and source

        Filter by `source`, `symbol`, `asset` (ids or slugs), `q` (name/symbol substring) and
        `since`/`until` (observed_at); sort with `sort`; page with `page`/`page_size`, or pass
        `pagination.next_cursor` as `cursor` for stable deep paging.
        """
        filters = DataFilters(
            source=args.get("source"), symbol=args.get("symbol"),
            assets=tuple(args.get("asset") or ()), q=args.get("q"),
            since=args.get("since"), until=args.get("until"),
        )
        page = list_current_quotes(get_session(), filters, sort=args["sort"], **page_window(args))
        return paged(page, args)


@blp.route("/<string:asset>", parameters=[ASSET_PARAM])
class DataDetail(MethodView):
    """One asset across sources."""

    @blp.response(200, AssetDetailSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such asset")
    def get(self, asset: str) -> Any:
        """Show an asset, its id at each source, its latest quote per source and a consensus

        The consensus is the median price across sources; `spread` = (max - min) / median and
        `disagree` is true when the spread exceeds the configured share.
        """
        share = current_app.config["SETTINGS"].consensus_disagreement_share
        return asset_detail(get_session(), asset, share)


@blp.route("/<string:asset>/history", parameters=[ASSET_PARAM])
class DataHistory(MethodView):
    """An asset's time series."""

    @blp.arguments(HistoryArgsSchema, location="query")
    @blp.response(200, HistoryEnvelopeSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such asset")
    def get(self, args: dict[str, Any], asset: str) -> dict[str, Any]:
        """List an asset's quotes, newest first

        Filter by `source` and `since`/`until` (at most 366 days apart); page with
        `page`/`page_size` or `cursor`.
        """
        page = asset_history(
            get_session(), asset, source=args.get("source"), since=args.get("since"),
            until=args.get("until"), **page_window(args),
        )
        return paged(page, args)
