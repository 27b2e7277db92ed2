"""Status pages are built once per cache slot: a cache hit runs no SQL, serves the same page."""
from __future__ import annotations

from typing import Any

from sqlalchemy import event, text


def test_a_status_page_cache_hit_runs_no_query_and_serves_the_same_bytes(loaded: Any) -> None:
    with loaded.engine.connect() as conn:
        btc = conn.execute(text("SELECT id FROM assets WHERE slug = 'bitcoin'")).scalar_one()
    app = loaded.client.application
    app.config["STATUS_CACHE_SECONDS"] = 3600  # no time slot ends between the miss and the hits
    cache = app.extensions["status_cache"]
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    api_engine = app.extensions["db_engine"]
    event.listen(api_engine, "before_cursor_execute", count)
    try:
        for path in ("/status", f"/status/assets/{btc}"):
            cache._entries.clear()  # a miss: built from the database
            statements.clear()
            built = loaded.client.get(path)
            assert built.status_code == 200, path
            assert statements, f"{path}: a miss must read the database"
            statements.clear()
            hits = [loaded.client.get(path) for _ in range(5)]
            assert all(hit.status_code == 200 for hit in hits)
            assert all(hit.get_data() == built.get_data() for hit in hits)
            assert statements == [], f"{path}: a cache hit ran {statements}"
    finally:
        event.remove(api_engine, "before_cursor_execute", count)
