"""GET / (links for a person, JSON for a machine) and /docs served without any CDN."""
from __future__ import annotations

import re
from typing import Any

from api.resources.docs_assets import ASSETS_DIR


def test_index_is_html_with_links_by_default(client: Any) -> None:
    for accept in (None, "text/html,application/xhtml+xml,*/*;q=0.8", "*/*"):
        response = client.get("/", headers={"Accept": accept} if accept else {})
        assert response.status_code == 200
        assert response.mimetype == "text/html"
        assert "Accept" in response.headers["Vary"]
        page = response.get_data(as_text=True)
        hrefs = set(re.findall(r'href="([^"]+)"', page))
        assert {"/docs", "/data", "/health", "/openapi.json", "/jobs"} <= hrefs
        # Nothing on the page is fetched from elsewhere.
        assert "http://" not in page and "https://" not in page


def test_index_as_json_marks_what_exists(client: Any) -> None:
    response = client.get("/", headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    links = {link["href"]: link for link in body["links"]}
    assert {"/docs", "/status", "/data", "/health", "/openapi.json", "/jobs"} <= set(links)
    for href in ("/docs", "/data", "/health", "/openapi.json", "/jobs"):
        assert links[href]["available"] is True, href
    rules = {rule.rule for rule in client.application.url_map.iter_rules()}
    # /status is listed as coming until a route serves it, then it becomes a link.
    assert links["/status"]["available"] is ("/status" in rules)
    page = client.get("/").get_data(as_text=True)
    if "/status" not in rules:
        assert '<code>/status</code>' in page and 'href="/status"' not in page
    for link in body["links"]:
        if link["available"]:
            assert client.get(link["href"]).status_code != 404, link


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
