"""/status/assets/<bitcoin> in headless Chromium after a real run of all three sources: 13 years
of CSV history on a log axis, and each source's latest point marked, labelled and in the plot."""
from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import Engine, text

from tests.browser.conftest import (
    SCREENSHOTS, network_events, off_machine, requests_seen, save_screenshot,
)
from tests.browser.accessibility import accessibility_problems
from tests.conftest import ROOT, TEST_TOKEN, WorkerProcess, truncate_tables
from tests.helpers.waiting import wait_for_job
from tests.upstream import ReplayUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.browser]
SOURCES = ["coingecko", "coinpaprika", "csv"]


def _http(url: str, body: dict[str, Any] | None = None) -> Any:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TEST_TOKEN}"}
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def loaded(live_server: str, engine: Engine, base_env: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One job of every source through a real worker: data/'s CSV files (Bitcoin from 2013)
    and both API sources from the replay upstream as `make demo` serves them (CoinPaprika
    coherent with CoinGecko: one Bitcoin price, minutes apart), all succeeding."""
    truncate_tables(engine)
    data_dir = tmp_path_factory.mktemp("chart-data") / "data"
    shutil.copytree(ROOT / "data", data_dir)
    upstream = ReplayUpstream(coinpaprika_coherent=True).start()
    env = {**os.environ, **base_env, "PYTHONPATH": str(ROOT), "CSV_DIR": str(data_dir),
           "COINGECKO_BASE_URL": upstream.coingecko_base_url,
           "COINPAPRIKA_BASE_URL": upstream.coinpaprika_base_url,
           "COINGECKO_RATE_LIMIT": "1000", "COINPAPRIKA_RATE_LIMIT": "1000",
           "HTTP_TIMEOUT_SECONDS": "3", "HTTP_MAX_RETRIES": "0"}
    worker = WorkerProcess(env, tmp_path_factory.mktemp("chart-worker") / "worker.log",
                           concurrency=3).start()
    try:
        job = _http(f"{live_server}/jobs", {"sources": SOURCES})
        job = wait_for_job(lambda path: _http(live_server + path), job["id"], timeout=120)
        assert job["status"] == "succeeded", job
        with engine.connect() as conn:
            btc = conn.execute(text("SELECT id FROM assets WHERE slug = 'bitcoin'")).scalar_one()
            sources = conn.execute(text("SELECT DISTINCT source FROM quotes WHERE asset_id = :a"),
                                   {"a": btc}).scalars().all()
        assert sorted(sources) == SOURCES
        yield {"base": live_server, "btc": btc}
    finally:
        worker.stop()
        upstream.stop()


def _box(driver: Any, element: Any) -> dict[str, float]:
    return dict(driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return {left: r.left, top: r.top, right: r.right, bottom: r.bottom,"
        " width: r.width, height: r.height};", element))


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (a["left"] < b["right"] and b["left"] < a["right"]
            and a["top"] < b["bottom"] and b["top"] < a["bottom"])


def _zoomed_chart(driver: Any, name: str) -> Path:
    """The chart alone at twice the pixel density, under var/screenshots/: the latest points'
    markers are a few pixels across, too small to judge on the whole page's screenshot."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1280, "height": 1000, "deviceScaleFactor": 2, "mobile": False})
    try:
        chart = driver.find_element(By.CSS_SELECTOR, "div.chart svg")
        path = SCREENSHOTS / name
        assert chart.screenshot(str(path)), f"no screenshot written to {path}"
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path


def test_long_history_on_a_log_axis_with_every_sources_latest_point(
        loaded: dict[str, Any], browser: Any) -> None:
    base = loaded["base"]
    network_events(browser)
    browser.get(f"{base}/status/assets/{loaded['btc']}")
    chart = browser.find_element(By.CSS_SELECTOR, "div.chart svg")
    assert chart.get_attribute("data-scale") == "log"
    assert "log scale" in browser.find_element(By.ID, "scale").text
    ticks = [t.text for t in chart.find_elements(By.CSS_SELECTOR, "text.tick")]
    assert ticks == ["100", "1,000", "10,000", "100,000"]
    plot = _box(browser, chart.find_element(By.CSS_SELECTOR, "rect.plot"))
    # The years before 2020 fill most of the plot's height, not a flat line at its foot.
    csv_line = chart.find_element(By.CSS_SELECTOR, 'g.series[data-series="csv"] polyline')
    left_half = [tuple(map(float, p.split(","))) for p in csv_line.get_attribute(
        "points").split()]
    middle = float(chart.find_element(By.CSS_SELECTOR, "rect.plot").get_attribute("x")) + float(
        chart.find_element(By.CSS_SELECTOR, "rect.plot").get_attribute("width")) / 2
    ys = [y for x, y in left_half if x < middle]
    assert max(ys) - min(ys) > 0.5 * plot["height"]
    # Every source's newest point: a marker of its own shape, seen, inside the plot, and its
    # name and the table's last price beside the plot, no label over another.
    last_prices = {row.find_element(By.TAG_NAME, "th").text: row.find_elements(
        By.TAG_NAME, "td")[-1].text for row in browser.find_elements(
        By.CSS_SELECTOR, "section[aria-labelledby=sources-h] tbody tr")}
    assert set(last_prices) == set(SOURCES)
    marks, labels, shapes = {}, {}, set()
    for source in SOURCES:
        group = chart.find_element(By.CSS_SELECTOR, f'g.latest[data-series="{source}"]')
        shapes.add(group.get_attribute("data-shape"))
        mark = group.find_element(By.CSS_SELECTOR, ".latest-mark")
        assert mark.is_displayed()
        marks[source] = box = _box(browser, mark)
        assert box["width"] >= 8 and box["height"] >= 8, (source, box)
        centre_x, centre_y = (box["left"] + box["right"]) / 2, (box["top"] + box["bottom"]) / 2
        assert plot["left"] <= centre_x <= plot["right"], (source, box, plot)
        assert plot["top"] <= centre_y <= plot["bottom"], (source, box, plot)
        label = group.find_element(By.CSS_SELECTOR, "text.latest-label")
        assert label.is_displayed() and label.text == f"{source} {last_prices[source]}"
        labels[source] = _box(browser, label)
        assert labels[source]["left"] > plot["right"]
    assert len(shapes) == 3
    assert not any(_overlap(labels[a], labels[b]) for a in SOURCES for b in SOURCES if a < b)
    # The two API sources agree, so their points meet: one marker goes round the other.
    gecko, paprika = marks["coingecko"], marks["coinpaprika"]
    assert _overlap(gecko, paprika), (gecko, paprika)
    assert abs(gecko["width"] - paprika["width"]) >= 4, (gecko, paprika)
    assert accessibility_problems(browser) == []
    shot = save_screenshot(browser, "status_asset_log.png")
    assert shot.stat().st_size > 20_000
    assert _zoomed_chart(browser, "status_asset_log_chart.png").stat().st_size > 20_000
    urls = requests_seen(network_events(browser))
    assert any(u.startswith(base) for u in urls) and off_machine(urls) == [], urls
    # The page's link switches to linear, and the range form keeps the choice.
    browser.find_element(By.LINK_TEXT, "show on a linear scale").click()
    WebDriverWait(browser, 20).until(lambda d: "scale=linear" in d.current_url)
    chart = browser.find_element(By.CSS_SELECTOR, "div.chart svg")
    assert chart.get_attribute("data-scale") == "linear"
    assert accessibility_problems(browser) == []
    save_screenshot(browser, "status_asset_linear.png")
    browser.find_element(By.CSS_SELECTOR, 'option[value="1y"]').click()
    browser.find_element(By.CSS_SELECTOR, "form.range button").click()
    WebDriverWait(browser, 20).until(lambda d: "range=1y" in d.current_url)
    assert "scale=linear" in browser.current_url
    assert browser.find_element(By.ID, "scale").get_attribute("data-scale") == "linear"
