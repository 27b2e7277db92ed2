"""The status page's Backfills section in headless Chromium: a finished and a queued backfill."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from sqlalchemy import Engine

from shared.backfill.request import BackfillRequest, create_backfill
from shared.backfill.run import execute_backfill
from shared.db import unit_of_work
from shared.sources.rate_limit import RedisRateLimiter
from tests.api.helpers import replay_settings, run_sources
from tests.browser.conftest import save_screenshot
from tests.browser.accessibility import accessibility_problems, contrast
from tests.conftest import truncate_tables
from tests.upstream import ReplayUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.browser]


def test_status_lists_backfills_with_chunk_progress(
    live_server: str, engine: Engine, base_env: dict[str, str], csv_dir: Path,
    upstream: ReplayUpstream, browser: Any,
) -> None:
    truncate_tables(engine)
    settings = replay_settings(base_env, csv_dir, upstream, BACKFILL_CHUNK_DAYS="30")
    for name in ("coingecko", "coingecko-backfill"):
        RedisRateLimiter(settings.redis_url, name, settings.coingecko_rate).clear()
    run_sources(engine, settings, ["coingecko"])
    now = datetime.now(timezone.utc)
    with unit_of_work(engine) as session:
        done, _ = create_backfill(session, BackfillRequest(
            source="coingecko", assets=["bitcoin", "ethereum"], since=now - timedelta(days=90),
            until=now - timedelta(days=1)), settings)
        queued, _ = create_backfill(session, BackfillRequest(
            source="coingecko", top=3, since=now - timedelta(days=200)), settings)
        done_id, queued_id = done.id, queued.id
    assert execute_backfill(done_id, settings, engine) == "succeeded"

    browser.get(f"{live_server}/status")
    table = browser.find_element(By.ID, "backfills")
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    # Active (queued) first, then the finished one.
    assert [r.find_element(By.TAG_NAME, "a").text for r in rows] == [
        f"backfill {queued_id}", f"backfill {done_id}"]
    assert "0/21 done" in rows[0].text and "21 pending" in rows[0].text
    assert "6/6 done" in rows[1].text and "succeeded" in rows[1].text
    assert "3 coins" in rows[0].text and "2 coins" in rows[1].text
    assert accessibility_problems(browser) == []
    for badge in table.find_elements(By.CSS_SELECTOR, ".badge"):
        ratio = contrast(badge.value_of_css_property("color"),
                         badge.value_of_css_property("background-color"))
        assert ratio >= 4.5, (badge.text, ratio)
    shot = save_screenshot(browser, "status_backfills.png")
    assert shot.stat().st_size > 20_000
