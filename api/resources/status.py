"""GET /status and /status/assets/<asset>: HTML status pages for people, cached briefly."""
from __future__ import annotations

import functools
import time
from datetime import datetime, timezone
from typing import Any, Callable

from flask import Blueprint, Response, current_app, render_template, request
from flask.blueprints import BlueprintSetupState
from flask_smorest import abort

from api.http.answer_cache import VersionedCache
from api.status.axes import SCALES
from api.db import current_data_version, get_session
from api.broker import check_workers, guarded, queue_depths
from api.status.page import REFRESH_SECONDS, asset_chart, status_context
from shared.queries.assets import resolve_asset
from shared.queries.price_chart import DEFAULT_RANGE, RANGES, price_chart

blp = Blueprint("status", __name__, url_prefix="/status")

# A page is rebuilt at most once per STATUS_CACHE_SECONDS (the setting; the app's config of
# that name overrides it) per process and data version: a wall of browsers refreshing costs a
# dictionary lookup each, and runs' ends show within it.
STATUS_CACHE_MAX_BYTES = 4 * 1024 * 1024
STATUS_CACHE_MAX_ENTRIES = 200
ASSET_PARAMS = frozenset({"range", "since", "until", "scale"})


@blp.record_once
def _init_cache(state: BlueprintSetupState) -> None:
    seconds = state.app.config.setdefault("STATUS_CACHE_SECONDS",
                                          state.app.config["SETTINGS"].status_cache_seconds)
    state.app.extensions["status_cache"] = VersionedCache(
        STATUS_CACHE_MAX_BYTES, STATUS_CACHE_MAX_ENTRIES, count_keys=True) if seconds else None


View = Callable[..., Response]


def _cached(by_query: bool) -> Callable[[View], View]:
    """Serve the page from the cache of the current time slot, keyed by path, the data version
    (a publish shows on the next request) and, `by_query`, the query string: a page that takes
    no parameter ignores it, so junk query strings do not each cost a build."""
    return functools.partial(_cache_view, by_query=by_query)


def _cache_view(view: View, by_query: bool) -> View:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        cache: VersionedCache | None = current_app.extensions.get("status_cache")
        if cache is None:
            return view(*args, **kwargs)
        slot = int(time.time() // current_app.config["STATUS_CACHE_SECONDS"])
        query = request.query_string if by_query else b""
        key = (request.path, query, current_data_version())
        html = cache.get(slot, key)
        if html is None:
            response = view(*args, **kwargs)
            if response.status_code != 200:
                return response
            html = response.get_data()
            cache.put(slot, key, html, len(html))
        return _page(html)

    return wrapper


def _page(html: bytes | str) -> Response:
    response = Response(html, mimetype="text/html")
    # A status page is always read fresh: the browser refreshes it itself.
    response.headers["Cache-Control"] = "no-store"
    return response


def _broker() -> dict[str, Any]:
    """Queue depths and workers online; None for what the broker did not answer."""
    queues = guarded(queue_depths, None)
    workers = guarded(check_workers, None) if queues is not None else None
    return {"queues": queues, "workers": workers}


@blp.get("")
@_cached(by_query=False)
def status() -> Response:
    """Sources against their objectives, the last day's runs, quality, workers, notifications."""
    now = datetime.now(timezone.utc)
    context = status_context(get_session(), current_app.config["SETTINGS"], now, _broker)
    return _page(render_template("status.html", **context))


def _when(name: str) -> datetime | None:
    value = request.args.get(name)
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        abort(422, errors={"query": {name: ["not an ISO-8601 date or time"]}})
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _window(now: datetime) -> tuple[str, datetime | None, datetime]:
    """(range name, since, until) from ?range= or ?since=&until=; 422 naming a bad one."""
    unknown = sorted(set(request.args) - ASSET_PARAMS)
    if unknown:
        abort(422, errors={"query": {name[:50]: ["unknown parameter"] for name in unknown}})
    name = request.args.get("range") or DEFAULT_RANGE
    if name not in RANGES:
        abort(422, errors={"query": {"range": [f"one of {', '.join(RANGES)}"]}})
    since, until = _when("since"), _when("until") or now
    if since is not None or "until" in request.args:
        name = "custom"
    else:
        span = RANGES[name]
        since = until - span if span is not None else None
    if since is not None and since >= until:
        abort(422, errors={"query": {"since": ["must be before until"]}})
    return name, since, until


def _scale() -> str | None:
    """?scale=log|linear, or None for the default (auto, or absent); 422 for another."""
    name = request.args.get("scale") or "auto"
    if name not in ("auto", *SCALES):
        abort(422, errors={"query": {"scale": [f"one of auto, {', '.join(SCALES)}"]}})
    return None if name == "auto" else name


@blp.get("/assets/<string:asset>")
@_cached(by_query=True)
def asset_status(asset: str) -> Response:
    """An asset's price per source over a range, consensus dashed, flagged points ringed,
    latest points labelled, on a linear or log price axis."""
    now = datetime.now(timezone.utc)
    range_name, since, until = _window(now)
    scale = _scale()
    session = get_session()
    found = resolve_asset(session, asset)
    chart = price_chart(session, found.id, since, until)
    label = f"{found.name} ({found.symbol}) price in USD"
    return _page(render_template(
        "status_asset.html", asset=found, chart=chart, range_name=range_name,
        ranges=list(RANGES), **asset_chart(chart, label, scale, request.args.to_dict()),
        since=chart.since, until=chart.until, refresh_seconds=REFRESH_SECONDS,
        flagged=sum(len(p) for p in chart.flagged.values())))
