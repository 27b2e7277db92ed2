"""GET /data/<asset>/candles, point-in-time lookups, and the CSV/NDJSON exports of history."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from flask import Response, redirect, request, stream_with_context, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from api.db import get_engine, get_session
from api.http.envelope import envelope, page_window
from api.schemas.history import (
    AsOfArgsSchema,
    AsOfBatchArgsSchema,
    AsOfBatchSchema,
    AsOfSchema,
    CandleArgsSchema,
    CandleEnvelopeSchema,
)
from api.http.read_timeout import export_engine
from api.schemas.common import HISTORY_MAX_RANGE, ErrorSchema
from shared.queries.export import (
    EXPORT_FORMATS,
    HISTORY_FIELDS,
    MEDIA_TYPES,
    candle_records,
    history_records,
    stream,
)
from shared.queries.as_of import asset_as_of, batch_as_of
from shared.queries.assets import first_observed, open_start_span, resolve_asset
from shared.queries.data import DataFilters
from shared.queries.data_export import DATA_EXPORT_FIELDS, data_records
from shared.queries.candles import CANDLE_FIELDS, candle_range, candles_page

blp = Blueprint("history", __name__, url_prefix="/data",
                description="Candles, point-in-time lookups and bulk export")

ASSET_PARAM = {"in": "path", "name": "asset", "description": "Asset id or slug",
               "schema": {"type": "string", "minLength": 1, "maxLength": 200},
               "example": "bitcoin"}
_ACCEPT = {"text/csv": "csv", "application/x-ndjson": "ndjson"}


def export_responses(view: Callable[..., Any]) -> Callable[..., Any]:
    """Document the streamed CSV and NDJSON bodies beside the JSON one (same status, 200)."""
    for media_type in ("application/x-ndjson", "text/csv"):
        view = blp.alt_response(
            200, schema={"type": "string"}, content_type=media_type,
            description="A JSON page; with `format=csv|ndjson` (or that Accept) every row, "
                        "streamed")(view)
    return view


def export_format(args: dict[str, Any]) -> str | None:
    """'csv' or 'ndjson' when asked for by `format=` (first) or Accept; None for JSON."""
    fmt = args.get("format")
    if fmt:
        return fmt if fmt in EXPORT_FORMATS else None
    accept = request.headers.get("Accept", "")
    if "csv" not in accept and "ndjson" not in accept:
        return None  # the usual case, on GET /data's hot path: no header parsing
    best = request.accept_mimetypes.best_match(["application/json", *_ACCEPT])
    return _ACCEPT.get(best or "")


def check_open_start(asset: str, source: str | None, args: dict[str, Any]) -> None:
    """422 naming `until` when an open since (the first quote) puts the range over the cap."""
    if args.get("since"):
        return
    until = args.get("until") or datetime.now(timezone.utc)
    span = open_start_span(get_session(), asset, source, until)
    if span is not None and span > HISTORY_MAX_RANGE:
        field = "until" if args.get("until") else "since"
        abort(422, errors={"query": {field: [
            f"the range must be at most {HISTORY_MAX_RANGE.days} days: give since (an open "
            "since counts as the asset's first quote, an open until as now)"]}})


def streamed(fmt: str, fields: tuple[str, ...], produce: Any, name: str) -> Response:
    """A streaming response of `produce(connection)`'s records in `fmt`.

    The read runs under API_EXPORT_STATEMENT_TIMEOUT_MS, and its first chunk is read here,
    before the response starts: the costly part of the query (plan, sort, first rows) then
    fails as an error answer (503 on a timeout), not as a 200 cut short.
    """
    chunks = stream(export_engine(get_engine()), fmt, fields, produce)
    first = next(chunks, None)
    body = stream_with_context(_resume(first, chunks))
    response = Response(body, mimetype=MEDIA_TYPES[fmt].split(";")[0])
    response.headers["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return response


def _resume(first: bytes | None, chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        if first is not None:
            yield first
        yield from chunks
    finally:
        # Closing the stream ends its `with engine.connect()`: the connection goes back.
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def export_history(asset: str, args: dict[str, Any]) -> Response:
    """Every quote of the history range as CSV or NDJSON (newest first, as the pages)."""
    fmt = export_format(args)
    assert fmt is not None
    source = args.get("source")
    check_open_start(asset, source, args)
    asset_id = resolve_asset(get_session(), asset).id
    until = args.get("until") or datetime.now(timezone.utc)
    since = args.get("since") or first_observed(get_session(), asset_id, source) or until
    get_session().close()  # the stream holds its own connection, not the request's
    return streamed(fmt, HISTORY_FIELDS,
                    lambda conn: history_records(conn, asset_id, source, since, until),
                    f"history-{asset_id}")


def export_data(args: dict[str, Any]) -> Response:
    """Every current record of GET /data's filters as CSV or NDJSON, in the pages' order."""
    fmt = export_format(args)
    assert fmt is not None
    filters = DataFilters(
        source=args.get("source"), symbols=tuple(args.get("symbol") or ()),
        assets=tuple(args.get("asset") or ()), q=args.get("q"), since=args.get("since"),
        until=args.get("until"), quality=args.get("quality"))
    sort = args["sort"]
    return streamed(fmt, DATA_EXPORT_FIELDS,
                    lambda conn: data_records(conn, filters, sort), "data")


def as_of_redirect(asset: str, at: datetime) -> Any:
    """307 from GET /data/<asset>?as_of= to the point-in-time lookup; 404 for no such asset."""
    resolve_asset(get_session(), asset)
    return redirect(url_for("history.AsOf", asset=asset, at=at.isoformat()), code=307)


@blp.route("/<string:asset>/candles", parameters=[ASSET_PARAM])
class Candles(MethodView):
    """OHLCV candles."""

    @blp.arguments(CandleArgsSchema, location="query")
    @blp.response(200, CandleEnvelopeSchema)
    @export_responses
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
        `quotes` = 0.
        """
        check_open_start(asset, args["source"], args)
        fmt = export_format(args)
        if fmt is not None:
            span = candle_range(get_session(), asset, args["source"], args["interval"],
                                args.get("since"), args.get("until"))
            if span is None:
                return streamed(fmt, CANDLE_FIELDS, lambda conn: iter(()), "candles")
            get_session().close()
            return streamed(fmt, CANDLE_FIELDS, lambda conn: candle_records(conn, span),
                            f"candles-{span.asset_id}-{span.source}-{args['interval']}")
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
