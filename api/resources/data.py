"""GET /data (current records), /data/<asset> (all sources + consensus), /data/<asset>/history."""
from __future__ import annotations

import functools
from typing import Any, Callable

import marshmallow as ma
from flask import current_app, request
from flask.blueprints import BlueprintSetupState
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from api.http.answer_cache import VersionedCache, deep_size
from api.db import current_data_version, get_engine, get_session
from api.http.envelope import body_template, envelope, page_window, paged, template_response
from api.schemas.common import (
    HISTORY_MAX_RANGE,
    AssetDetailSchema,
    DataEnvelopeSchema,
    ErrorSchema,
    HistoryEnvelopeSchema,
    quote_record,
)
from api.schemas.history import DataExportArgsSchema, DetailArgsSchema, HistoryExportArgsSchema
from api.resources.history import (
    as_of_redirect,
    export_data,
    export_format,
    export_history,
    export_responses,
)
from shared.queries.assets import asset_detail, asset_history, open_start_span
from shared.queries.data import DataFilters, read_current_quotes

blp = Blueprint("data", __name__, url_prefix="/data", description="Unified market data")

# Per process: ~1,300 pages of 100 records. 0 turns the answer cache off (bench.wsgi does, to
# measure misses); the totals are then still counted once per filter set and data version.
# Entries are charged their key and objects too (api.http.answer_cache), and capped in number.
DATA_CACHE_MAX_BYTES = 32 * 1024 * 1024
DATA_CACHE_MAX_ENTRIES = 20_000
# Totals: ~500-700 bytes each with their filter-set key, so a couple of thousand filter sets.
DATA_TOTALS_MAX_BYTES = 1024 * 1024
DATA_TOTALS_MAX_ENTRIES = 5_000


@blp.record_once
def _init_caches(state: BlueprintSetupState) -> None:
    max_bytes = state.app.config.setdefault("DATA_CACHE_MAX_BYTES", DATA_CACHE_MAX_BYTES)
    state.app.extensions["data_cache"] = VersionedCache(
        max_bytes, DATA_CACHE_MAX_ENTRIES, count_keys=True) if max_bytes > 0 else None
    totals_bytes = state.app.config.setdefault("DATA_TOTALS_MAX_BYTES", DATA_TOTALS_MAX_BYTES)
    state.app.extensions["data_totals"] = VersionedCache(
        totals_bytes, DATA_TOTALS_MAX_ENTRIES, count_keys=True)


def _cached(view: Callable[..., Any]) -> Callable[..., Any]:
    """Answer GET /data from the per-process cache when the data version has not moved.

    current_quotes changes only when a job publishes, and that transaction also moves the
    data version (migration 0004). Reading the committed version costs one primary-key read,
    so every request checks it: the first request after a publish misses and reads the new
    data. The key is the raw query string: only answers that passed argument validation are
    stored, and validation depends on nothing else, so a hit skips parsing too.
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cache: VersionedCache | None = current_app.extensions.get("data_cache")
        # An export asked for by Accept has the query string of a JSON page: not from the cache.
        if cache is not None and export_format({}) is None:
            template = cache.get(current_data_version(), request.query_string)
            if template is not None:
                return template_response(template)
        return view(*args, **kwargs)

    return wrapper


ASSET_PARAM = {"in": "path", "name": "asset", "description": "Asset id or slug",
               "schema": {"type": "string", "minLength": 1, "maxLength": 200},
               "example": "bitcoin"}


@blp.route("")
class DataList(MethodView):
    """Current records."""

    @_cached
    # Unknown parameters are refused (422 naming them): the cache key is the raw query string,
    # so accepted junk (?x=1, ?x=2, ...) would make a new entry per request.
    @blp.arguments(DataExportArgsSchema, location="query", unknown=ma.RAISE)
    @blp.response(200, DataEnvelopeSchema)
    @export_responses
    def get(self, args: dict[str, Any]) -> Any:
        """List the current record per asset and source

        Filter by `source`, `symbol` and `asset` (comma lists; assets by id or slug), `q`
        (name/symbol substring) and `since`/`until` (observed_at); sort with `sort`; page with
        `page`/`page_size`, or pass `pagination.next_cursor` as `cursor` for stable deep paging.
        `format=csv|ndjson` (or that Accept) streams every matching record instead.
        """
        if export_format(args) is not None:
            return export_data(args)
        filters = DataFilters(
            source=args.get("source"), symbols=tuple(args.get("symbol") or ()),
            assets=tuple(args.get("asset") or ()), q=args.get("q"),
            since=args.get("since"), until=args.get("until"), quality=args.get("quality"),
        )
        snapshot = read_current_quotes(get_engine(), filters, current_app.extensions["data_totals"],
                                       sort=args["sort"], **page_window(args))
        page = snapshot.page
        # The records are serialized straight from the row tuples (api.schemas.common.quote_record),
        # not by a marshmallow dump of DataEnvelopeSchema: same bytes, a fraction of the cost.
        records = [quote_record(row) for row in page.rows]
        number = None if args.get("cursor") else args["page"]
        template = body_template(records, number, args["page_size"], page.total,
                                 page.next_cursor)
        if template is None:  # pragma: no cover - only with a JSON provider that reorders
            return current_app.json.response(
                envelope(records, number, args["page_size"], page.total, page.next_cursor))
        cache: VersionedCache | None = current_app.extensions.get("data_cache")
        if cache is not None and snapshot.version is not None:
            cache.put(snapshot.version, request.query_string, template, deep_size(template))
        return template_response(template)


@blp.route("/<string:asset>", parameters=[ASSET_PARAM])
class DataDetail(MethodView):
    """One asset across sources."""

    @blp.arguments(DetailArgsSchema, location="query")
    @blp.response(200, AssetDetailSchema)
    @blp.alt_response(307, description="With `as_of`: to /data/<asset>/as_of?at=")
    @blp.alt_response(404, schema=ErrorSchema, description="No such asset")
    def get(self, args: dict[str, Any], asset: str) -> Any:
        """Show an asset, its id at each source, its latest quote per source and a consensus

        The consensus is the median price of the clean quotes observed within
        `window.seconds` of the freshest one; `spread` = (max - min) / median and `disagree`
        is true when two or more of them spread more than the configured share. `excluded`
        says which sources were left out and why (out of the window, flagged, no price).
        With `as_of`, a 307 to the point-in-time lookup (GET /data/<asset>/as_of).
        """
        if args.get("as_of"):
            return as_of_redirect(asset, args["as_of"])
        settings = current_app.config["SETTINGS"]
        return asset_detail(get_session(), asset, settings.consensus_disagreement_share,
                            settings.consensus_window_seconds)


@blp.route("/<string:asset>/history", parameters=[ASSET_PARAM])
class DataHistory(MethodView):
    """An asset's time series."""

    @blp.arguments(HistoryExportArgsSchema, location="query")
    @blp.response(200, HistoryEnvelopeSchema)
    @export_responses
    @blp.alt_response(404, schema=ErrorSchema, description="No such asset")
    def get(self, args: dict[str, Any], asset: str) -> Any:
        """List an asset's quotes, newest first

        Filter by `source` and `since`/`until` (at most 366 days apart; an open `until`
        counts as now, an open `since` as the asset's first quote); page with
        `page`/`page_size` or `cursor`. `format=csv|ndjson` (or that Accept) streams every
        quote of the range instead (the range cap then holds with an open since too).
        """
        if export_format(args) is not None:
            return export_history(asset, args)
        if args.get("until") and not args.get("since"):
            span = open_start_span(get_session(), asset, args.get("source"), args["until"])
            if span is not None and span > HISTORY_MAX_RANGE:
                abort(422, errors={"query": {"until": [
                    f"until must be at most {HISTORY_MAX_RANGE.days} days after the asset's "
                    "first quote when since is not given (an open since counts as the first "
                    "quote)"]}})
        page = asset_history(
            get_session(), asset, source=args.get("source"), since=args.get("since"),
            until=args.get("until"), **page_window(args),
        )
        return paged(page, args)
