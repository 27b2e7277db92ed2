"""/status and /status/assets/<bitcoin> in headless Chromium against a real stack (gunicorn, a
worker, the replay upstream with CoinPaprika refusing its key): offline, right, accessible."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import urllib.request
from typing import Any, Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import Engine, text

from tests.browser.accessibility import accessibility_problems, contrast
from tests.browser.conftest import (
    STATUS_SLOT_SECONDS, network_events, off_machine, requests_seen, save_screenshot,
)
from tests.conftest import ROOT, TEST_TOKEN, WorkerProcess, truncate_tables
from tests.helpers.waiting import wait_for_job
from tests.upstream import ReplayUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.browser]
SOURCES = ["coingecko", "coinpaprika", "csv"]


class Receiver:
    """Local webhooks: /hook accepts (200), /slack answers 500."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200 if self.path.startswith("/hook") else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _http(url: str, body: dict[str, Any] | None = None) -> Any:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TEST_TOKEN}"}
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def stack(live_server: str, engine: Engine, base_env: dict[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One job through a real worker: CoinGecko and CSV succeed, CoinPaprika gets a 401."""
    truncate_tables(engine)
    data_dir = tmp_path_factory.mktemp("status-data") / "data"
    shutil.copytree(ROOT / "data", data_dir)
    upstream = ReplayUpstream().start()
    upstream.add_fault("401", endpoint="coinpaprika")
    receiver = Receiver()
    env = {**os.environ, **base_env, "PYTHONPATH": str(ROOT), "CSV_DIR": str(data_dir),
           "COINGECKO_BASE_URL": upstream.coingecko_base_url,
           "COINPAPRIKA_BASE_URL": upstream.coinpaprika_base_url,
           "COINGECKO_RATE_LIMIT": "1000", "COINPAPRIKA_RATE_LIMIT": "1000",
           "HTTP_TIMEOUT_SECONDS": "3", "HTTP_MAX_RETRIES": "0",
           "ALERT_WEBHOOK_URL": receiver.url + "/hook",
           "SLACK_WEBHOOK_URL": receiver.url + "/slack"}
    worker = WorkerProcess(env, tmp_path_factory.mktemp("status-worker") / "worker.log",
                           concurrency=4).start()
    try:
        jobs = []
        for _ in range(2):  # two jobs: the trends and the grid have more than one point
            job = _http(f"{live_server}/jobs", {"sources": SOURCES})
            job = wait_for_job(lambda path: _http(live_server + path), job["id"], timeout=120)
            assert job["status"] == "partial", job
            jobs.append(job)
        with engine.connect() as conn:
            btc = conn.execute(text("SELECT id FROM assets WHERE slug = 'bitcoin'")).scalar_one()
        deadline = time.monotonic() + 30  # the failure's messages: one sent, one failed
        while True:
            with engine.connect() as conn:
                sent = sorted(conn.execute(text("SELECT target, status FROM notifications")).all())
            if sent == [("slack", "failed"), ("webhook", "sent")]:
                break
            assert time.monotonic() < deadline, sent
            time.sleep(0.2)
        yield {"jobs": jobs, "btc": btc, "base": live_server}
    finally:
        worker.stop()
        upstream.stop()
        receiver.close()


def _assert_offline(events: list[dict[str, Any]], base: str) -> None:
    urls = requests_seen(events)
    assert any(u.startswith(base) for u in urls), urls
    assert off_machine(urls) == [], urls  # the browser's own chrome:// pages aside


def test_status_page_shows_the_failing_source_and_charts(stack: dict[str, Any],
                                                         browser: Any) -> None:
    base = stack["base"]
    network_events(browser)
    browser.get(f"{base}/status")
    rows = {row.get_attribute("data-source"): row for row in
            browser.find_elements(By.CSS_SELECTOR, "tr[data-source]")}
    states = {name: row.find_element(By.CSS_SELECTOR, ".badge").text
              for name, row in rows.items()}
    assert states == {"coingecko": "fresh", "coinpaprika": "failing", "csv": "fresh"}
    assert "HTTP 401" in rows["coinpaprika"].text
    told = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=notify-h]").text
    assert "1 sent" in told and "1 failed" in told and "HTTP 500" in told, told
    # Sparklines with points for every source; the run grid with one linked cell per run.
    for row in rows.values():
        lines = row.find_elements(By.CSS_SELECTOR, "svg polyline")
        assert len(lines) == 2 and all(line.get_attribute("points") for line in lines)
    cells = browser.find_elements(By.CSS_SELECTOR, "svg a rect.cell")
    assert len(cells) == 6
    links = {a.get_dom_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "svg a")}
    assert {f"{base}/runs/{r['id']}" for job in stack["jobs"] for r in job["runs"]} == {
        urllib.request.urljoin(base, h) for h in links}
    assert accessibility_problems(browser) == []
    for badge in browser.find_elements(By.CSS_SELECTOR, ".badge"):
        ratio = contrast(badge.value_of_css_property("color"),
                         badge.value_of_css_property("background-color"))
        assert ratio >= 4.5, (badge.text, ratio)
    for cell in cells:  # boxes without text: 3:1 against the page (WCAG non-text contrast)
        assert contrast(cell.get_attribute("fill"), "#ffffff") >= 3.0
    shot = save_screenshot(browser, "status.png")
    assert shot.stat().st_size > 20_000
    _assert_offline(network_events(browser), base)


def test_asset_page_charts_bitcoin_per_source(stack: dict[str, Any], browser: Any) -> None:
    base = stack["base"]
    network_events(browser)
    browser.get(f"{base}/status/assets/{stack['btc']}")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Bitcoin (BTC)"
    series = {g.get_attribute("data-series"): g for g in
              browser.find_elements(By.CSS_SELECTOR, "svg g.series")}
    assert {"coingecko", "csv"} <= set(series), list(series)
    csv_points = series["csv"].find_element(By.TAG_NAME, "polyline").get_attribute("points")
    assert len(csv_points.split()) > 50
    assert accessibility_problems(browser) == []
    select = browser.find_element(By.ID, "range")
    assert select.get_attribute("value") == "all"
    shot = save_screenshot(browser, "status_asset.png")
    assert shot.stat().st_size > 20_000
    _assert_offline(network_events(browser), base)
    # The range form works in the browser: a custom range comes back as the chosen one.
    browser.find_element(By.CSS_SELECTOR, 'option[value="1y"]').click()
    browser.find_element(By.CSS_SELECTOR, "form.range button").click()
    WebDriverWait(browser, 20).until(lambda d: d.current_url.endswith("range=1y"))
    assert browser.find_element(By.ID, "range").get_attribute("value") == "1y"


def test_index_links_to_the_status_page(stack: dict[str, Any], browser: Any) -> None:
    browser.get(f"{stack['base']}/")
    browser.find_element(By.CSS_SELECTOR, 'a[href="/status"]').click()
    assert browser.find_element(By.TAG_NAME, "h1").text == "Pipeline status"


def test_a_busy_day_opens_on_its_newest_runs(stack: dict[str, Any], browser: Any,
                                             engine: Engine) -> None:
    """A day at the 5-minute schedule (288 runs per source) overflows the grid: it opens
    scrolled to the newest end, and the page itself does not scroll sideways."""
    with engine.begin() as conn:
        jobs = conn.execute(text(
            "WITH j AS (INSERT INTO jobs (status, sources, trigger, created_at) "
            "SELECT 'succeeded', ARRAY['coingecko', 'csv'], 'cli', "
            "now() - i * interval '5 minutes' FROM generate_series(1, 287) AS i "
            "RETURNING id, created_at) "
            "INSERT INTO runs (job_id, source, status, created_at, started_at, finished_at) "
            "SELECT j.id, s.source, CASE WHEN j.id % 17 = 0 THEN 'failed' ELSE 'succeeded' "
            "END, j.created_at, j.created_at, j.created_at + interval '2 seconds' "
            "FROM j CROSS JOIN unnest(ARRAY['coingecko', 'csv']) AS s(source) "
            "RETURNING job_id")).scalars().all()
    try:
        # The page is built at most once per slot (STATUS_CACHE_SECONDS): the next one.
        time.sleep(STATUS_SLOT_SECONDS - time.time() % STATUS_SLOT_SECONDS + 0.2)
        browser.get(f"{stack['base']}/status")
        cells = browser.find_elements(By.CSS_SELECTOR, "svg a rect.cell")
        assert len(cells) == 6 + 2 * 287
        box = browser.find_element(By.CSS_SELECTOR, ".scroll")
        visible = set(browser.execute_script(
            "const b = arguments[0].getBoundingClientRect();"
            "return Array.from(document.querySelectorAll('svg a rect.cell')).filter(c => {"
            " const r = c.getBoundingClientRect(); return r.left >= b.left && r.right <= b.right;"
            "}).map(c => c.parentNode.getAttribute('href'));", box))
        # Rows end together: every source's newest run is in view, CoinPaprika's two too.
        newest = {f"/runs/{r['id']}" for r in stack["jobs"][-1]["runs"]}
        assert newest <= visible, sorted(visible)[-5:]
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth")
        save_screenshot(browser, "status_busy.png")
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM jobs WHERE id = ANY(:j)"), {"j": list(set(jobs))})
