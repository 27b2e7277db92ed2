"""GET /data (current records), /data/<asset> (all sources + consensus), /data/<asset>/history."""
from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, Callable

import marshmallow as ma
from flask import current_app, g, redirect, request, url_for
from flask.blueprints import BlueprintSetupState
from flask.views import MethodView
from flask_smorest import Blueprint

from api.db import current_data_version, get_engine, get_session, get_statement_engine
from api.http.answer_cache import VersionedCache, deep_size
from api.http.envelope import body_template, envelope, page_window, paged, template_response
from api.export import export_format, export_responses, streamed
from api.schemas.common import ASSET_PARAM, ErrorSchema
from api.schemas.data import (
    AssetDetailSchema,
    DataEnvelopeSchema,
    DataExportArgsSchema,
    DetailArgsSchema,
    HistoryEnvelopeSchema,
    HistoryExportArgsSchema,
    quote_record,
    quote_records_json,
)
from shared.queries.assets import asset_detail, asset_history, resolve_asset
from shared.queries.data import DataFilters
from shared.queries.data_read import read_current_quotes
from shared.queries.export import data_export, history_export

blp = Blueprint("data", __name__, url_prefix="/data", description="Unified market data")

# Per process: ~1,300 pages of 100 records. 0 turns the answer cache off (bench.wsgi does, to
# measure misses); totals (`total=true`) are then still counted once per filter set and data
# version.
# Entries are charged their key and objects too (api.http.answer_cache), and capped in number.
DATA_CACHE_MAX_BYTES = 32 * 1024 * 1024
DATA_CACHE_MAX_ENTRIES = 20_000
# Totals: ~500-700 bytes each with their filter-set key, so a couple of thousand filter sets.
DATA_TOTALS_MAX_BYTES = 1024 * 1024
DATA_TOTALS_MAX_ENTRIES = 5_000


# One instance for every request: given the class, webargs would build a schema (and copy its
# fields) per request, ~10% of an uncached GET /data.
DATA_ARGS = DataExportArgsSchema()


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
            g.data_version_seen = current_data_version()
            template = cache.get(g.data_version_seen, request.query_string)
            if template is not None:
                return template_response(template)
        return view(*args, **kwargs)

    return wrapper


def _filters(args: dict[str, Any]) -> DataFilters:
    """The listing's filters from GET /data's arguments (its pages and its export alike)."""
    return DataFilters(
        source=args.get("source"), symbols=tuple(args.get("symbol") or ()),
        assets=tuple(args.get("asset") or ()), q=args.get("q"),
        since=args.get("since"), until=args.get("until"), quality=args.get("quality"),
    )


def _as_of_redirect(asset: str, at: datetime) -> Any:
    """307 from GET /data/<asset>?as_of= to the point-in-time lookup; 404 for no such asset."""
    resolve_asset(get_session(), asset)
    return redirect(url_for("history.AsOf", asset=asset, at=at.isoformat()), code=307)


@blp.route("")
class DataList(MethodView):
    """Current records."""

    @_cached
    # Unknown parameters are refused (422 naming them): the cache key is the raw query string,
    # so accepted junk (?x=1, ?x=2, ...) would make a new entry per request.
    @blp.arguments(DATA_ARGS, location="query", unknown=ma.RAISE)
    @blp.response(200, DataEnvelopeSchema)
    @export_responses(blp)
    def get(self, args: dict[str, Any]) -> Any:
        """List the current record per asset and source

        Filter by `source`, `symbol` and `asset` (comma lists; assets by id or slug), `q`
        (name/symbol substring) and `since`/`until` (observed_at); sort with `sort`; page with
        `page`/`page_size`, or pass `pagination.next_cursor` as `cursor` for stable deep paging.
        `total=true` adds the exact count of matching records (`pagination.total`,
        `total_pages`; null otherwise). `format=csv|ndjson` (or that Accept) streams every
        matching record instead.
        """
        fmt = export_format(args)
        if fmt is not None:
            return streamed(fmt, data_export(_filters(args), args["sort"]))
        snapshot = read_current_quotes(get_engine(), _filters(args),
                                       current_app.extensions["data_totals"],
                                       count=args["total"],
                                       autocommit=get_statement_engine(), sort=args["sort"],
                                       **page_window(args))
        page = snapshot.page
        number = None if args.get("cursor") else args["page"]
        # The records are written as JSON text straight from the row tuples
        # (api.schemas.data.quote_records_json), not by a marshmallow dump of DataEnvelopeSchema
        # nor as dicts through the JSON provider: same bytes, a fraction of the cost.
        records_json = quote_records_json(page.rows, current_app.json, current_app.debug)
        template = body_template((), number, args["page_size"], page.total, page.next_cursor,
                                 data_json=records_json) if records_json is not None else None
        if template is None:  # another JSON provider, or debug's indented output
            records = [quote_record(row) for row in page.rows]
            template = body_template(records, number, args["page_size"], page.total,
                                     page.next_cursor)
            if template is None:  # pragma: no cover - only with a JSON provider that reorders
                return current_app.json.response(
                    envelope(records, number, args["page_size"], page.total, page.next_cursor))
        cache: VersionedCache | None = current_app.extensions.get("data_cache")
        # Stored under the version of the snapshot it was read from: on a replica, its own
        # data_version row, replicated with the quotes. A replica still behind the version
        # this process has seen answers, but does not replace the newer entries.
        seen = g.get("data_version_seen")
        if cache is not None and snapshot.version is not None \
                and (seen is None or snapshot.version >= seen):
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
            return _as_of_redirect(asset, args["as_of"])
        settings = current_app.config["SETTINGS"]
        return asset_detail(get_session(), asset, settings.consensus_disagreement_share,
                            settings.consensus_window_seconds)


@blp.route("/<string:asset>/history", parameters=[ASSET_PARAM])
class DataHistory(MethodView):
    """An asset's time series."""

    @blp.arguments(HistoryExportArgsSchema, location="query")
    @blp.response(200, HistoryEnvelopeSchema)
    @export_responses(blp)
    @blp.alt_response(404, schema=ErrorSchema, description="No such asset")
    def get(self, args: dict[str, Any], asset: str) -> Any:
        """List an asset's quotes, newest first

        Filter by `source` and `since`/`until` (at most 366 days apart; an open `until`
        counts as now, an open `since` as the asset's first quote); page with
        `page`/`page_size` or `cursor`; `total=true` adds the exact count of the range's rows
        (`pagination.total`, `total_pages`; null otherwise). `format=csv|ndjson` (or that
        Accept) streams every quote of the range instead (the range cap then holds with an
        open since too). Past retention's horizon a row per rollup bucket follows
        (`resolution` hourly or daily).
        """
        fmt = export_format(args)
        if fmt is not None:
            return streamed(fmt, history_export(get_session(), asset, args.get("source"),
                                                args.get("since"), args.get("until")))
        page = asset_history(
            get_session(), asset, source=args.get("source"), since=args.get("since"),
            until=args.get("until"), count=args["total"], **page_window(args),
        )
        return paged(page, args)
