"""Browser fixtures: a gunicorn-served API and headless Chromium that can reach 127.0.0.1 only.

Reusable by any page test (e.g. a /status page): `live_server` is the API's base URL,
`browser` a selenium driver with network logging, `requests_seen(browser)` every URL the page
asked for, `save_screenshot(browser, name)` a PNG under var/screenshots/.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import ROOT
from tests.helpers.serving import Gunicorn

CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BINARY", "/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "var" / "screenshots"
# Every host name resolves to nothing except 127.0.0.1, and Chromium's own background traffic
# (updates, sync, field trials, first-run pings) is switched off: a page can only load what
# this machine serves.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
    "--no-first-run", "--no-default-browser-check", "--metrics-recording-only",
    "--window-size=1280,1600",
)
LOCAL_HOSTS = {"127.0.0.1"}
# The served API's status-page slot (STATUS_CACHE_SECONDS, 10 by default): a test that changes
# what a page shows waits for the next slot, at most this long.
STATUS_SLOT_SECONDS = 1
# URLs that never touch the network.
LOCAL_SCHEMES = {"data", "blob", "about", "chrome", "chrome-error"}

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def live_server(base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[str]:
    """The API under gunicorn (api/serving/gunicorn_conf.py, as `make run`) on a loopback port."""
    log = tmp_path_factory.mktemp("live-server") / "api.log"
    env = {**os.environ, **base_env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           "STATUS_CACHE_SECONDS": str(STATUS_SLOT_SECONDS)}
    server = Gunicorn(env, log)
    try:
        yield server.base
    finally:
        server.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium (Debian's chromium + chromium-driver) with the network log on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(binary), (
            f"{binary} is missing: apt-get install -y chromium chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # An explicit driver path: Selenium Manager (which would go online) is never run.
    driver = webdriver.Chrome(options=options, service=Service(
        executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def network_events(driver: Any) -> list[dict[str, Any]]:
    """The DevTools Network.* events logged since the last call."""
    events = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method", "").startswith("Network."):
            events.append(message)
    return events


def requests_seen(events: list[dict[str, Any]]) -> list[str]:
    """Every URL the page asked for (Network.requestWillBeSent), in order."""
    return [e["params"]["request"]["url"] for e in events
            if e["method"] == "Network.requestWillBeSent"]


def off_machine(urls: list[str]) -> list[str]:
    """The URLs that would leave the machine (anything but 127.0.0.1 and local schemes)."""
    return [u for u in urls if urlsplit(u).scheme not in LOCAL_SCHEMES
            and urlsplit(u).hostname not in LOCAL_HOSTS]


def save_screenshot(driver: Any, name: str) -> Path:
    """A PNG of the whole page under var/screenshots/ (kept after the test for a person)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(900, min(int(height), 6000)))
    path = SCREENSHOTS / name
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    return path
