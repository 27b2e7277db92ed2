"""GET /: where to go from here; a small HTML page for a person, JSON for a machine."""
from __future__ import annotations

from html import escape
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

blp = Blueprint("index", __name__)

# (path, what it is). Paths of routes this app does not have (yet) are listed as coming.
LINKS: tuple[tuple[str, str], ...] = (
    ("/docs", "Interactive API documentation (Swagger UI)"),
    ("/status", "Status page: sources, last runs, freshness"),
    ("/data", "Current quotes per asset and source (paged; ?asset=BTC,ETH)"),
    ("/jobs", "ETL jobs (POST with the bearer token queues one)"),
    ("/runs", "ETL runs with their counters"),
    ("/stats", "Row counts, last runs, rates"),
    ("/health", "Database, broker, workers and data freshness"),
    ("/metrics", "Prometheus metrics"),
    ("/openapi.json", "OpenAPI 3 description of the API"),
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 44rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; color: #1a1a1a; }}
code {{ background: #f2f2f2; padding: 0 .25rem; }}
li {{ margin: .3rem 0; }}
.coming {{ color: #777; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>Crypto market data from CoinGecko, CoinPaprika and CSV files, kept in PostgreSQL.</p>
<ul>
{items}
</ul>
<p>Ask for <code>Accept: application/json</code> to get this list as JSON.</p>
</body>
</html>
"""


def _has_route(path: str) -> bool:
    return any(rule.rule == path for rule in current_app.url_map.iter_rules())


def index_links() -> list[dict[str, Any]]:
    """The index entries, each marked available or not by this app's routes."""
    return [{"href": path, "title": title, "available": _has_route(path)}
            for path, title in LINKS]


@blp.get("/")
def index() -> Response:
    """The index: HTML unless the client prefers application/json."""
    links = index_links()
    title = str(current_app.config.get("API_TITLE", "API"))
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    if best == "application/json":
        answer = jsonify({"title": title, "links": links})
        answer.vary.add("Accept")
        return answer
    items = "\n".join(
        f'<li><a href="{escape(link["href"])}">{escape(link["href"])}</a> '
        f'&mdash; {escape(link["title"])}</li>' if link["available"] else
        f'<li class="coming"><code>{escape(link["href"])}</code> '
        f'&mdash; {escape(link["title"])} (coming)</li>'
        for link in links
    )
    html = _PAGE.format(title=escape(title), items=items)
    response = Response(html, mimetype="text/html")
    response.vary.add("Accept")
    return response
