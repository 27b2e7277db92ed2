"""The worker's default concurrency covers every enabled source plus one child for the rest."""
from __future__ import annotations

from shared.celery_config import celery_config
from shared.config import load_settings


def test_default_concurrency_is_one_child_per_enabled_source_plus_one(
    base_env: dict[str, str]
) -> None:
    every = load_settings({**base_env, "ETL_SOURCES": "coingecko,coinpaprika,csv"})
    assert celery_config(every)["worker_concurrency"] == 4
    one = load_settings({**base_env, "ETL_SOURCES": "csv"})
    assert celery_config(one)["worker_concurrency"] == 2
