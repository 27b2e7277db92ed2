"""Replica settings (DATABASE_READ_URLS, DATABASE_LISTEN_URL, REPLICA_MAX_LAG_SECONDS)."""
from __future__ import annotations

import pytest

from api.replicas import DOWN, LAGGING, NOT_A_REPLICA, OK, UNCHECKED, replica_name
from api.schemas.replicas import REPLICA_STATES
from shared.config import ConfigError, load_settings


def test_read_urls_are_a_comma_list_each_normalized_and_the_listen_url_defaults_to_the_primary(
) -> None:
    settings = load_settings({
        "DATABASE_URL": "postgres://app:pw@primary:5432/kasparro",
        "DATABASE_READ_URLS": " postgres://app:pw@r1/kasparro , ,postgresql://app@r2:6432/k ",
    })
    assert settings.database_read_urls == (
        "postgresql+psycopg2://app:pw@r1/kasparro", "postgresql+psycopg2://app@r2:6432/k")
    assert settings.database_listen_url == "postgresql+psycopg2://app:pw@primary:5432/kasparro"
    assert settings.replica_max_lag_seconds == 5.0
    # Unset: no replica, every read on the primary.
    assert load_settings({}).database_read_urls == ()
    listen = load_settings({"DATABASE_URL": "postgres://app@bouncer:6432/k",
                            "DATABASE_LISTEN_URL": "postgres://app@primary/k"})
    assert listen.database_listen_url == "postgresql+psycopg2://app@primary/k"
    assert listen.database_url == "postgresql+psycopg2://app@bouncer:6432/k"


def test_a_bad_replica_url_or_bound_names_its_variable_and_not_the_password() -> None:
    with pytest.raises(ConfigError) as bad:
        load_settings({"DATABASE_READ_URLS": "mysql://app:s3cret@r1/k"})
    assert "DATABASE_READ_URLS" in str(bad.value) and "s3cret" not in str(bad.value)
    with pytest.raises(ConfigError, match="DATABASE_LISTEN_URL"):
        load_settings({"DATABASE_LISTEN_URL": "redis://x"})
    for value in ("0", "-1", "nan"):
        with pytest.raises(ConfigError, match="REPLICA_MAX_LAG_SECONDS must be above 0"):
            load_settings({"REPLICA_MAX_LAG_SECONDS": value})
    assert load_settings({"REPLICA_MAX_LAG_SECONDS": "0.5"}).replica_max_lag_seconds == 0.5


def test_a_replica_is_named_by_host_port_and_database_only() -> None:
    assert replica_name("postgresql+psycopg2://app:s3cret@10.0.0.12:6432/kasparro"
                        "?sslmode=require&password=other") == "10.0.0.12:6432/kasparro"
    assert replica_name("postgresql+psycopg2://app@r1/k") == "r1:5432/k"
    assert repr(load_settings({"DATABASE_READ_URLS": "postgres://a:s3cret@r/k"})).count(
        "s3cret") == 0


def test_the_health_schema_knows_every_replica_state() -> None:
    assert set(REPLICA_STATES) == {OK, LAGGING, DOWN, NOT_A_REPLICA, UNCHECKED}
