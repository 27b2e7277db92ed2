"""The migrations build the schema the models describe."""
from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text

from shared.models import Base


def test_upgrade_leaves_nothing_for_autogenerate(engine: Engine) -> None:
    # The session's database was built by `flask --app api db upgrade` (tests/conftest.py).
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff: list[Any] = compare_metadata(context, Base.metadata)
    assert diff == []
