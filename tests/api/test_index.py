"""GET / (every route: links for a person, JSON for a machine) and /docs served without a CDN."""
from __future__ import annotations

import html
import re
from typing import Any

from api.resources.docs_assets import ASSETS_DIR
from api.resources.index import TITLES, UNLISTED, route_template


def _listed_routes(app: Any) -> dict[str, set[str]]:
    """{URI template: methods} of every rule the app registers but the unlisted ones."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        href = route_template(rule.rule)
        if href not in UNLISTED:
            routes.setdefault(href, set()).update(rule.methods - {"HEAD", "OPTIONS"})
    return routes


def test_route_templates() -> None:
    assert route_template("/data/<string:asset>/candles") == "/data/{asset}/candles"
    assert route_template("/raw/<string:source>/<id:record_id>") == "/raw/{source}/{record_id}"
    assert route_template("/docs/assets/<path:filename>") == "/docs/assets/{filename}"
    assert route_template("/runs/<run_id>") == "/runs/{run_id}"


def test_the_unlisted_rules_are_only_this_page_and_asset_files(client: Any) -> None:
    rules = {route_template(rule.rule) for rule in client.application.url_map.iter_rules()}
    # Each exclusion is a rule the app really has (none hides a route by a stale name).
    assert UNLISTED <= rules
    assert client.get("/static/anything.css").status_code == 404  # no static folder


def test_index_json_lists_every_route_the_app_registers_once(client: Any) -> None:
    response = client.get("/", headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert "Accept" in response.headers["Vary"]
    links = response.get_json()["links"]
    routes = _listed_routes(client.application)
    assert {"/anomalies", "/backfills", "/raw/{source}", "/data/{asset}", "/status/assets/{asset}",
            "/data/{asset}/candles", "/data/{asset}/history"} <= set(routes)
    assert sorted(link["href"] for link in links) == sorted(routes)
    for link in links:
        assert set(link["methods"]) == routes[link["href"]], link
        assert link["templated"] is ("{" in link["href"])
        # Every route has its own line written for it, not the docstring fallback.
        assert link["title"] == TITLES[link["href"]], link
    # No line describes a route that is gone.
    assert set(TITLES) == set(routes)


def test_index_html_has_one_line_per_route_links_for_what_a_browser_can_open(
        client: Any) -> None:
    routes = _listed_routes(client.application)
    for accept in (None, "text/html,application/xhtml+xml,*/*;q=0.8", "*/*"):
        response = client.get("/", headers={"Accept": accept} if accept else {})
        assert response.status_code == 200
        assert response.mimetype == "text/html"
        assert "Accept" in response.headers["Vary"]
        page = response.get_data(as_text=True)
        items = re.findall(r"<li>(.*?)</li>", page)
        assert len(items) == len(routes)
        hrefs = set(re.findall(r'href="([^"]+)"', page))
        codes = set(re.findall(r"<li><code>([^<]+)</code>", page))
        assert hrefs | {html.unescape(c) for c in codes} == set(routes)
        assert {"/docs", "/data", "/anomalies", "/status", "/health", "/jobs"} <= hrefs
        # Templates and POST-only routes are shown, not linked.
        assert {"/data/{asset}", "/backfills", "/jobs/{job_id}"} <= codes
        assert "(GET, POST)" in next(i for i in items if 'href="/jobs"' in i)
        # Nothing on the page is fetched from elsewhere.
        assert "http://" not in page and "https://" not in page
    for href in hrefs:
        answer = client.get(href)
        assert answer.status_code != 404, href
        answer.close()


def test_a_route_added_later_is_listed_with_its_docstring(app: Any) -> None:
    def extra(n: int) -> str:
        """Something new
        and more."""
        return str(n)

    app.add_url_rule("/extra/<int:n>", "extra", extra)
    links = app.test_client().get("/", headers={"Accept": "application/json"}).get_json()
    assert {"href": "/extra/{n}", "title": "Something new", "methods": ["GET"],
            "templated": True} in links["links"]


def test_docs_page_loads_its_assets_from_the_app(client: Any) -> None:
    page = client.get("/docs").get_data(as_text=True)
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(s.startswith("/docs/assets/") for s in sources), sources
    assert "cdn" not in page and "https://" not in page
    assert '"validatorUrl": null' in page
    for src in sources:
        response = client.get(src)
        assert response.status_code == 200, src
        name = src.rsplit("/", 1)[1]
        assert response.get_data() == (ASSETS_DIR / name).read_bytes()
        assert "max-age" in response.headers["Cache-Control"]
        response.close()


def test_docs_assets_serve_only_the_bundle_files(client: Any) -> None:
    assert client.get("/docs/assets/index.html").status_code == 404
    assert client.get("/docs/assets/../../setup.cfg").status_code == 404
    assert client.get("/docs/assets/nope.js").status_code == 404
