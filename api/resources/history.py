"""GET /data/<asset>/candles (JSON pages or a streamed export) and point-in-time lookups."""
from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.db import get_session
from api.http.envelope import envelope, page_window
from api.export import export_format, export_responses, streamed
from api.schemas.common import ASSET_PARAM, ErrorSchema
from api.schemas.history import (
    AsOfArgsSchema,
    AsOfBatchArgsSchema,
    AsOfBatchSchema,
    AsOfSchema,
    CandleArgsSchema,
    CandleEnvelopeSchema,
)
from shared.queries.as_of import asset_as_of, batch_as_of
from shared.queries.candles import candles_page
from shared.queries.export import candle_export

blp = Blueprint("history", __name__, url_prefix="/data",
                description="Candles, point-in-time lookups and bulk export")


@blp.route("/<string:asset>/candles", parameters=[ASSET_PARAM])
class Candles(MethodView):
    """OHLCV candles."""

    @blp.arguments(CandleArgsSchema, location="query")
    @blp.response(200, CandleEnvelopeSchema)
    @export_responses(blp)
    @blp.alt_response(404, schema=ErrorSchema, description="No such asset")
    def get(self, args: dict[str, Any], asset: str) -> Any:
        """List an asset's candles at one source, oldest first, with the empty buckets

        Buckets start on multiples of `interval` since 1970-01-01 UTC and hold quotes with
        start <= observed_at < end. open/close = the first/last quote's price (a CSV row's
        own open/close when it carries OHLC), high/low = max/min of the prices (the rows'
        own high/low), volume = the 24h volume of the bucket's last quote (sources report a
        rolling 24h volume; it is not summed). Pages count buckets, empty ones included;
        `gaps` lists the page's empty buckets, never filled. `since`/`until` as history
        (at most 366 days; an open since is the first quote at `source`). With
        `format=csv|ndjson` every bucket of the range is streamed, empty ones as rows with
        `quotes` = 0. Past retention's horizon the hourly or daily rollups answer whole
        buckets; each candle names its `resolution`.
        """
        fmt = export_format(args)
        if fmt is not None:
            return streamed(fmt, candle_export(
                get_session(), asset, args["source"], args["interval"], args.get("since"),
                args.get("until")))
        page = candles_page(get_session(), asset, source=args["source"],
                            interval=args["interval"], since=args.get("since"),
                            until=args.get("until"), **page_window(args))
        number = None if args.get("cursor") else args["page"]
        body = envelope(page.candles, number, args["page_size"], page.total, page.next_cursor)
        return {**body, "interval": page.interval, "gaps": page.gaps}


@blp.route("/<string:asset>/as_of", parameters=[ASSET_PARAM])
class AsOf(MethodView):
    """Point in time."""

    @blp.arguments(AsOfArgsSchema, location="query")
    @blp.response(200, AsOfSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such asset")
    def get(self, args: dict[str, Any], asset: str) -> Any:
        """Per source, the asset's latest quote at or before `at`, with its age in seconds

        A source with no quote at or before `at` is absent from `quotes`.
        """
        return asset_as_of(get_session(), asset, args["at"], args.get("source"))


@blp.route("/as_of")
class AsOfBatch(MethodView):
    """Point in time, for many (asset, time) pairs."""

    @blp.arguments(AsOfBatchArgsSchema, location="query")
    @blp.response(200, AsOfBatchSchema)
    def get(self, args: dict[str, Any]) -> Any:
        """Answer up to 100 `pair=<asset>@<ISO time>` lookups in one request, in order

        Each item is as GET /data/<asset>/as_of; an unknown asset is an item with `error`.
        """
        return {"data": batch_as_of(get_session(), args["pair"], args.get("source"))}
