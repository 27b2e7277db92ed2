"""Every common PostgreSQL URL form works: in Settings, the launcher and the migrations."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from shared.config import ConfigError, libpq_params, load_settings, normalize_database_url

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("raw, expected", [
    ("postgres://u:p%40ss@db.example:5433/app",
     "postgresql+psycopg2://u:p%40ss@db.example:5433/app"),
    ("postgresql://u@db.example/app", "postgresql+psycopg2://u@db.example/app"),
    ("postgresql+psycopg2://u@db.example/app", "postgresql+psycopg2://u@db.example/app"),
    ("postgresql+psycopg://u@db.example/app", "postgresql+psycopg2://u@db.example/app"),
    ("POSTGRES://u@db.example/app?sslmode=require",
     "postgresql+psycopg2://u@db.example/app?sslmode=require"),
    ("  postgresql:///app?host=/run/postgresql  ",
     "postgresql+psycopg2:///app?host=%2Frun%2Fpostgresql"),
])
def test_url_forms_map_to_psycopg2(raw: str, expected: str) -> None:
    assert normalize_database_url(raw) == expected
    assert load_settings({"DATABASE_URL": raw}).database_url == expected
    # SQLAlchemy picks psycopg2 (not psycopg 3) and hands the query on as libpq keywords.
    engine = create_engine(normalize_database_url(raw))
    try:
        assert engine.dialect.driver == "psycopg2"
        _args, kwargs = engine.dialect.create_connect_args(engine.url)
        assert kwargs["dbname"] == "app"
        for key, value in make_url(expected).query.items():
            assert kwargs[key] == value
    finally:
        engine.dispose()


def test_unset_or_empty_is_the_local_default() -> None:
    default = "postgresql+psycopg2://postgres@127.0.0.1:5432/kasparro"
    assert load_settings({}).database_url == default
    assert load_settings({"DATABASE_URL": " "}).database_url == default


def test_libpq_params_carry_query_and_decoded_password() -> None:
    params = libpq_params("postgres://alice:s%3Acret@h:6543/d?sslmode=disable&"
                          "application_name=kasparro")
    assert params == {"host": "h", "port": "6543", "user": "alice", "password": "s:cret",
                      "dbname": "d", "sslmode": "disable", "application_name": "kasparro"}


@pytest.mark.parametrize("raw", ["mysql://u:hunter2@h/d", "postgresql+asyncpg://u:hunter2@h/d",
                                 "host=h password=hunter2 dbname=d", "mssql://u:hunter2@h/d"])
def test_other_urls_are_refused_without_echoing_secrets(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_URL": raw})
    assert "DATABASE_URL" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def _form(raw_server: str, form: str, name: str, query: str) -> str:
    """The server URL in `form` (a scheme), pointing at database `name`, plus `query`."""
    url = make_url(normalize_database_url(raw_server)).set(database=name, query={})
    rest = url.render_as_string(hide_password=False).split("://", 1)[1]
    return f"{form}://{rest}{query}"


@pytest.mark.e2e
@pytest.mark.parametrize("form, query", [
    ("postgres", ""),
    ("postgresql", ""),
    ("postgresql+psycopg2", ""),
    ("postgresql", "?sslmode=disable"),
    ("postgres", "?sslmode=disable&application_name=kasparro-url-test"),
])
def test_launcher_and_migrations_take_each_form(form: str, query: str) -> None:
    """`scripts.stack services` creates the database and `flask db upgrade` builds the schema."""
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"kasparro_url_{uuid.uuid4().hex[:10]}"
    raw = _form(server, form, name, query)
    env = {**os.environ, "DATABASE_URL": raw,
           "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")}
    env.pop("EMBEDDED", None)
    admin = create_engine(make_url(normalize_database_url(server)).set(database="postgres"),
                          isolation_level="AUTOCOMMIT")
    try:
        services = subprocess.run([sys.executable, "-m", "scripts.stack", "services"], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=120)
        assert services.returncode == 0, services.stderr
        assert f"created database '{name}'" in services.stderr
        # The launcher hands every process the psycopg2 form, query parameters kept.
        printed = dict(line.split("=", 1) for line in services.stdout.splitlines())
        assert printed["DATABASE_URL"] == normalize_database_url(raw)
        assert printed["DATABASE_URL"].startswith("postgresql+psycopg2://")
        assert dict(make_url(printed["DATABASE_URL"]).query) == dict(parse_qsl(query[1:]))

        migrate = subprocess.run([sys.executable, "-m", "flask", "--app", "api", "db", "upgrade"],
                                 cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        assert "No module named 'psycopg'" not in migrate.stderr
        db = create_engine(normalize_database_url(raw))
        try:
            with db.connect() as conn:
                assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
                assert conn.execute(text("SELECT to_regclass('quotes')")).scalar_one() == "quotes"
        finally:
            db.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
