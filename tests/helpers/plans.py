"""Statements in tests: the ones code sends, and how many rows each read (EXPLAIN ANALYZE)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import Connection, Engine, event, text


def index_rows(plan: dict[str, Any]) -> int:
    """Rows the plan's index scans returned, over all its nodes (loops included)."""
    own = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1) if "Index Name" in plan else 0
    return own + sum(index_rows(child) for child in plan.get("Plans", []))


def rows_read(conn: Connection, statement: str) -> int:
    """Rows the index scans of `statement` (as sent, parameters inlined) returned when run."""
    (plan,) = conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + statement)).scalar_one()
    return index_rows(plan["Plan"])


@contextmanager
def statements_sent(engine: Engine) -> Iterator[list[str]]:
    """Every statement sent through `engine` within the block, as sent (parameters inlined)."""
    sent: list[str] = []

    def capture(_conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append(cursor.mogrify(statement, parameters).decode())

    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", capture)
