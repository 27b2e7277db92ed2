"""The migrations build the schema the models describe."""
from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
import pytest
from sqlalchemy import Connection, Engine, text

from shared.models import Base
from shared.storage.partitions import include_name
from tests.helpers.migrations import flask_db, scratch_database
from tests.helpers.raw_items import stored_items


def test_upgrade_leaves_nothing_for_autogenerate(engine: Engine) -> None:
    # The session's database was built by `flask --app api db upgrade` (tests/conftest.py).
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        # Partitions are made at run time: no model describes them (as in migrations/env.py).
        context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "include_name": include_name})
        diff: list[Any] = compare_metadata(context, Base.metadata)
    assert diff == []


@pytest.mark.processes
def test_0006_moves_csv_lines_into_blocks_and_back() -> None:
    # Lines stored one row each (before 0006) come out of raw_lines unchanged, hashes and all;
    # API records stay API records (in item blocks since 0021); the downgrade puts both back.
    rows = [("csv", f"a:b.csv:{n}", f"{n},Coin,C,2020-01-0{n},1,1,1,1,1,1", 7) for n in (2, 3)]
    rows += [("csv", "other.csv:2", "x,y", 8), ("coingecko", "bitcoin", '{"id": "bitcoin"}', 7)]
    with scratch_database() as (url, engine):
        flask_db(url, "upgrade", "0005")
        with engine.begin() as conn:
            for source, key, payload, run in rows:
                conn.execute(text(
                    "INSERT INTO raw_records (source, source_key, content_hash, payload, run_id) "
                    "VALUES (:s, :k, sha256(convert_to(:p, 'UTF8')), :p, :r)"),
                    {"s": source, "k": key, "p": payload, "r": run})
        stored = "SELECT source, source_key, payload, run_id, content_hash FROM {} ORDER BY 2"

        def rows(conn: Connection, table: str) -> list[tuple[Any, ...]]:
            return [(*row[:4], bytes(row[4])) for row in conn.execute(text(stored.format(table)))]

        with engine.connect() as conn:
            before = rows(conn, "raw_records")
        flask_db(url, "upgrade")
        with engine.connect() as conn:
            lines = rows(conn, "raw_lines")
            api = [(i.source, i.source_key, i.payload, i.run_id, i.content_hash)
                   for i in stored_items(conn)]  # in blocks since 0021
            blocks = conn.execute(text("SELECT count(*) FROM raw_line_blocks")).scalar_one()
        assert sorted(lines + api) == sorted(before)
        assert [row[0] for row in api] == ["coingecko"] and blocks == 2
        flask_db(url, "downgrade", "0005")
        with engine.connect() as conn:
            assert sorted(rows(conn, "raw_records")) == sorted(before)
