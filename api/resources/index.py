"""GET /: every public route, one line each; a small HTML page for a person, JSON for a machine."""
from __future__ import annotations

import re
from html import escape
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

blp = Blueprint("index", __name__)

# One line per route, keyed by its template; the list itself comes from the app's url_map, so a
# new route is listed (with its view's docstring) even before it gets a line here.
TITLES: dict[str, str] = {
    "/docs": "Interactive API documentation (Swagger UI)",
    "/openapi.json": "OpenAPI 3 description of the API",
    "/status": "Status page: sources, last runs, quality, workers, backfills",
    "/status/assets/{asset}": "Price chart of one asset per source (HTML; id or slug)",
    "/data": "Current quote per asset and source (paged; filters; CSV/NDJSON export)",
    "/data/{asset}": "One asset (id or slug): its id at each source, latest quotes, consensus",
    "/data/{asset}/history": "An asset's quotes over time, newest first",
    "/data/{asset}/candles": "OHLCV candles of an asset at one source",
    "/data/{asset}/as_of": "An asset's latest quote per source at or before a time (?at=)",
    "/data/as_of": "The same for up to 100 (asset, time) pairs (?pair=<asset>@<time>)",
    "/raw/{source}": "Stored raw payloads of a source, newest first",
    "/raw/{source}/{record_id}": "One stored raw payload",
    "/jobs": "ETL jobs (POST with the bearer token queues one)",
    "/jobs/{job_id}": "One job with each source's run",
    "/runs": "ETL runs with their counters",
    "/runs/{run_id}": "One run",
    "/runs/compare": "Two runs' counters and durations compared (?a=&b=)",
    "/backfills": "Queue a CoinGecko history backfill (POST with the bearer token)",
    "/backfills/{backfill_id}": "One backfill with its chunks",
    "/anomalies": "Run and data anomalies with evidence and coin (?asset=, source, kind)",
    "/stats": "Row counts, last runs, reject reasons, drift, anomalies",
    "/health": "Database, broker, workers and data freshness",
    "/health/live": "Liveness probe (the process answers; no I/O)",
    "/health/ready": "Readiness probe (database and broker reachable)",
    "/metrics": "Prometheus metrics",
}

# Rules that are not resources: this page itself, Flask's static folder (the app has none, so
# it serves nothing) and the Swagger UI files that /docs loads.
UNLISTED = frozenset({"/", "/static/{filename}", "/docs/assets/{filename}"})
_HIDDEN_METHODS = frozenset({"HEAD", "OPTIONS"})

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 48rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; color: #1a1a1a; }}
code {{ background: #f2f2f2; padding: 0 .25rem; }}
li {{ margin: .3rem 0; }}
.methods {{ color: #555; font-size: .9em; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>Crypto market data from CoinGecko, CoinPaprika and CSV files, kept in PostgreSQL.
Every route this API serves; <code>{{name}}</code> stands for a value.</p>
<ul>
{items}
</ul>
<p>Ask for <code>Accept: application/json</code> to get this list as JSON.</p>
</body>
</html>
"""


def route_template(rule: str) -> str:
    """A Flask rule as a URI template: `/data/<string:asset>` -> `/data/{asset}`."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0].strip() if (doc or "").strip() else ""


def index_links(app: Flask) -> list[dict[str, Any]]:
    """Every listed route of `app`: {href, title, methods, templated}, in TITLES' order."""
    methods: dict[str, set[str]] = {}
    endpoints: dict[str, str] = {}
    for rule in app.url_map.iter_rules():
        href = route_template(rule.rule)
        if href in UNLISTED:
            continue
        methods.setdefault(href, set()).update(set(rule.methods or ()) - _HIDDEN_METHODS)
        endpoints.setdefault(href, rule.endpoint)
    order = {href: n for n, href in enumerate(TITLES)}
    links = []
    for href in sorted(methods, key=lambda h: (order.get(h, len(order)), h)):
        view = app.view_functions.get(endpoints[href])
        title = TITLES.get(href) or _first_line(getattr(view, "__doc__", None)) or href
        links.append({"href": href, "title": title, "methods": sorted(methods[href]),
                      "templated": "{" in href})
    return links


def _item(link: dict[str, Any]) -> str:
    href, title = escape(link["href"]), escape(link["title"])
    verbs = "" if link["methods"] == ["GET"] else \
        f' <span class="methods">({escape(", ".join(link["methods"]))})</span>'
    # A template or a route without GET is no link a browser can follow.
    if link["templated"] or "GET" not in link["methods"]:
        return f"<li><code>{href}</code> &mdash; {title}{verbs}</li>"
    return f'<li><a href="{href}">{href}</a> &mdash; {title}{verbs}</li>'


@blp.get("/")
def index() -> Response:
    """The index: HTML unless the client prefers application/json."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    links = index_links(app)
    title = str(current_app.config.get("API_TITLE", "API"))
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    if best == "application/json":
        answer = jsonify({"title": title, "links": links})
        answer.vary.add("Accept")
        return answer
    html = _PAGE.format(title=escape(title), items="\n".join(_item(link) for link in links))
    response = Response(html, mimetype="text/html")
    response.vary.add("Accept")
    return response
