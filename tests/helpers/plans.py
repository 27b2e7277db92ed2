"""Reading EXPLAIN (ANALYZE, FORMAT JSON) plans in tests: how many rows a statement read."""
from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text


def index_rows(plan: dict[str, Any]) -> int:
    """Rows the plan's index scans returned, over all its nodes (loops included)."""
    own = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1) if "Index Name" in plan else 0
    return own + sum(index_rows(child) for child in plan.get("Plans", []))


def rows_read(conn: Connection, statement: str) -> int:
    """Rows the index scans of `statement` (as sent, parameters inlined) returned when run."""
    (plan,) = conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + statement)).scalar_one()
    return index_rows(plan["Plan"])
