"""/docs renders Swagger UI in a real browser, offline: every request goes to 127.0.0.1."""
from __future__ import annotations

from typing import Any

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import network_events, off_machine, requests_seen, save_screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.browser]


def test_docs_render_the_operations_with_no_request_off_the_machine(
    live_server: str, browser: Any
) -> None:
    network_events(browser)  # drop the start page's events: only /docs's are checked
    browser.get(f"{live_server}/docs")
    WebDriverWait(browser, 30).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")) >= 5)
    paths = {e.text.replace("\u200b", "") for e in
             browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/data", "/jobs", "/health"} <= paths, paths
    methods = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-method")}
    assert {"GET", "POST"} <= methods
    assert "Kasparro" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
    shot = save_screenshot(browser, "docs.png")
    assert shot.stat().st_size > 10_000

    events = network_events(browser)
    urls = requests_seen(events)
    assert f"{live_server}/docs" in urls
    assert f"{live_server}/openapi.json" in urls
    assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in urls), urls
    assert off_machine(urls) == [], urls
    # Every one of the page's requests was answered (the browser's own start page, still
    # loading in the background, is not the page's).
    ours = {e["params"]["requestId"] for e in events if e["method"] == "Network.requestWillBeSent"
            and e["params"]["request"]["url"].startswith(live_server)}
    failed = [e["params"] for e in events if e["method"] == "Network.loadingFailed"
              and e["params"]["requestId"] in ours]
    assert failed == [], failed
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"
              and "favicon.ico" not in entry["message"]]
    assert errors == [], errors


def test_the_browser_cannot_reach_other_hosts(live_server: str, browser: Any) -> None:
    """The harness itself: a name other than 127.0.0.1 does not resolve, so nothing leaks."""
    with pytest.raises(WebDriverException, match="ERR_NAME_NOT_RESOLVED"):
        browser.get("http://cdn.jsdelivr.net/npm/swagger-ui-dist/swagger-ui.css")


def test_index_page_links_to_the_docs(live_server: str, browser: Any) -> None:
    network_events(browser)
    browser.get(f"{live_server}/")
    links = {a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a")}
    assert f"{live_server}/docs" in links and f"{live_server}/data" in links
    save_screenshot(browser, "index.png")
    browser.find_element(By.CSS_SELECTOR, 'a[href="/docs"]').click()
    WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    assert off_machine(requests_seen(network_events(browser))) == []
