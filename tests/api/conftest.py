"""API test fixtures: settings on the replay upstream, and a database loaded once per module."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import Engine

from shared.config import Settings
from tests.api.helpers import Loaded, replay_settings, run_sources
from tests.conftest import ROOT, truncate_tables
from tests.upstream import ReplayUpstream


@pytest.fixture
def api_settings(base_env: dict[str, str], csv_dir: Path, upstream: ReplayUpstream) -> Settings:
    """Settings whose API sources point at the replay upstream."""
    return replay_settings(base_env, csv_dir, upstream)


@pytest.fixture
def all_sources(clean_db: Engine, api_settings: Settings) -> dict[str, Any]:
    """The real fixture CSVs plus the recorded CoinGecko and CoinPaprika pages, loaded."""
    return run_sources(clean_db, api_settings, ["coingecko", "coinpaprika", "csv"])


@pytest.fixture(scope="module")
def loaded(engine: Engine, base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Loaded]:
    """Every source loaded through the real pipeline, shared read-only by a module's tests."""
    truncate_tables(engine)
    data_dir = tmp_path_factory.mktemp("loaded") / "data"
    shutil.copytree(ROOT / "data", data_dir)
    server = ReplayUpstream().start()
    try:
        settings = replay_settings(base_env, data_dir, server)
        job = run_sources(engine, settings, ["coingecko", "coinpaprika", "csv"])
    finally:
        server.stop()
    assert job["status"] == "succeeded", job
    from api import create_app

    client = create_app({"TESTING": True, "RATELIMIT_ENABLED": False},
                        settings=settings).test_client()
    yield Loaded(engine, settings, job, client)
