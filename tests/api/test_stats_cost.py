"""/stats, /metrics, /status and /health read no table that grows every day in full.

Every statement the API sends for them is captured as sent (literal values) and EXPLAINed
with sequential scans disabled, so a plan can only scan a whole table when nothing else
answers the statement: no plan may scan a quotes or raw partition, the rejects, anomalies or
drift events with a sequential scan or an index scan without a condition (a newest-first
read under a LIMIT is bounded and allowed). A count(*) of any of them fails here.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

from sqlalchemy import event, text

from tests.api.helpers import Loaded

GROWING = ("quotes", "raw_line_blocks", "raw_item_blocks", "raw_records", "rejected_records",
           "anomalies", "drift_events")
PATHS = ("/stats", "/metrics", "/status", "/health")


def _nodes(plan: dict[str, Any], limited: bool = False) -> Iterator[tuple[dict[str, Any], bool]]:
    """Every node of a plan, and whether a Limit is above it."""
    yield plan, limited
    for child in plan.get("Plans", []):
        yield from _nodes(child, limited or plan["Node Type"] == "Limit")


def _parents(conn: Any) -> dict[str, str]:
    """Partition -> its table, and index -> its table (a Bitmap Index Scan names only its
    index), so that a scan of either counts as one of the table."""
    parents = dict(conn.execute(text(
        "SELECT c.relname, p.relname FROM pg_inherits i JOIN pg_class c ON c.oid = "
        "i.inhrelid JOIN pg_class p ON p.oid = i.inhparent")).all())
    parents.update(conn.execute(text(
        "SELECT ic.relname, coalesce(pp.relname, tc.relname) FROM pg_index x "
        "JOIN pg_class ic ON ic.oid = x.indexrelid JOIN pg_class tc ON tc.oid = x.indrelid "
        "LEFT JOIN pg_inherits i ON i.inhrelid = tc.oid "
        "LEFT JOIN pg_class pp ON pp.oid = i.inhparent")).all())
    return parents


def _full_reads(conn: Any, sql: str, parents: dict[str, str]) -> list[str]:
    """The scans of growing tables in the plan of `sql` that read them whole."""
    plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + sql.replace(":", r"\:"))).scalar_one()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    found = []
    for node, limited in _nodes(plan[0]["Plan"]):
        relation = node.get("Relation Name") or node.get("Index Name", "")
        table = parents.get(relation, relation)
        if table not in GROWING:
            continue
        kind = node["Node Type"]
        if kind == "Seq Scan" or (kind in ("Index Scan", "Index Only Scan", "Bitmap Index Scan")
                                  and "Index Cond" not in node and not limited):
            found.append(f"{kind} on {relation}")
    return found


def _reads_sent(loaded: Loaded) -> tuple[list[str], list[str]]:
    """Every statement GET on PATHS sends (as sent), and its reads; /status built afresh."""
    app = loaded.client.application
    if app.extensions.get("status_cache") is not None:
        app.extensions["status_cache"]._entries.clear()  # /status built from the database
    sent: list[str] = []

    def capture(_conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append(cursor.mogrify(statement, parameters).decode())

    api_engine = app.extensions["db_engine"]
    event.listen(api_engine, "before_cursor_execute", capture)
    try:
        for path in PATHS:
            assert loaded.client.get(path).status_code in (200, 503), path
    finally:
        event.remove(api_engine, "before_cursor_execute", capture)
    reads = [s for s in sent if s.lstrip().upper().startswith(("SELECT", "WITH"))]
    return sent, reads


def test_the_operational_reads_scan_no_growing_table(loaded: Loaded) -> None:
    sent, reads = _reads_sent(loaded)
    assert len(reads) > 20, sent  # the four answers were built, not served from a cache
    with loaded.engine.connect() as conn:
        # The data is there: a count of it would be a scan of real partitions.
        assert conn.execute(text("SELECT count(*) FROM quotes")).scalar_one() > 1000
        parents = _parents(conn)
        conn.execute(text("SET enable_seqscan = off"))
        full = {sql: reads_ for sql in reads if (reads_ := _full_reads(conn, sql, parents))}
    assert full == {}


def test_the_check_sees_a_count_of_history(loaded: Loaded) -> None:
    """The check is not vacuous: the statement the old /stats sent is caught."""
    with loaded.engine.connect() as conn:
        parents = _parents(conn)
        conn.execute(text("SET enable_seqscan = off"))
        caught = _full_reads(conn, "SELECT source, count(*) FROM quotes GROUP BY source",
                             parents)
        assert caught and all(" quotes_" in c for c in caught), caught
        assert _full_reads(conn, "SELECT count(*) FROM rejected_records", parents)


# A month-old history of runs: 5,000 jobs of one run each, half of them failed with an error.
_OLD_RUNS = text("""
WITH j AS (
    INSERT INTO jobs (status, sources, trigger, created_at, started_at, finished_at)
    SELECT 'succeeded', ARRAY['csv'], 'beat', t, t, t + interval '1 second'
    FROM generate_series(1, :n) AS i,
         LATERAL (SELECT now() - interval '30 days' - i * interval '5 minutes' AS t) at
    RETURNING id, created_at
)
INSERT INTO runs (job_id, source, kind, status, error, created_at, started_at, finished_at)
SELECT id, 'csv', 'extract', CASE WHEN id % 2 = 0 THEN 'failed' ELSE 'succeeded' END,
       CASE WHEN id % 2 = 0 THEN 'old error' END, created_at, created_at,
       created_at + interval '1 second'
FROM j
""")
# As many old flag sets (a flagged run's kinds and clock), a quote each.
_OLD_FLAG_SETS = text("""
INSERT INTO flag_sets (source, kinds, thresholds, quotes, created_at)
SELECT 'csv', 1, '{}', 1, now() - interval '30 days' FROM generate_series(1, :n)
""")
OLD_RUNS = 5000


def _rows_read(plan: dict[str, Any], parents: dict[str, str], table: str) -> int:
    """Rows the executed plan read from `table`: returned and filtered out, every loop."""
    total = 0
    for node, _limited in _nodes(plan):
        relation = node.get("Relation Name") or node.get("Index Name", "")
        if parents.get(relation, relation) == table and "Scan" in node["Node Type"]:
            total += (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
                      + node.get("Rows Removed by Index Recheck", 0)) * node.get("Actual Loops", 1)
    return total


def test_a_month_of_old_runs_is_not_read(loaded: Loaded) -> None:
    """Runs, jobs and flag sets grow every day (~900 runs at the default schedule): the four
    answers read the newest ones by index ranges, so 5,000 of each from a month ago are never
    read, whatever plan the planner picks (each statement run by EXPLAIN ANALYZE, rows
    counted)."""
    with loaded.engine.begin() as conn:
        conn.execute(_OLD_RUNS, {"n": OLD_RUNS})
        conn.execute(_OLD_FLAG_SETS, {"n": OLD_RUNS})
        conn.execute(text("ANALYZE runs; ANALYZE jobs; ANALYZE flag_sets"))
    reads = _reads_sent(loaded)[1]
    heavy = {}
    with loaded.engine.connect() as conn:
        parents = _parents(conn)
        for sql in reads:
            plan = conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) "
                                     + sql.replace(":", r"\:"))).scalar_one()
            plan = json.loads(plan) if isinstance(plan, str) else plan
            read = {t: _rows_read(plan[0]["Plan"], parents, t)
                    for t in ("runs", "jobs", "flag_sets")}
            if max(read.values()) >= OLD_RUNS // 5:
                heavy[" ".join(sql.split())[:120]] = read
        conn.rollback()
    assert heavy == {}
    with loaded.engine.connect() as conn:  # the check sees a read of every run
        plan = conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) "
                                 "SELECT status, count(*) FROM runs GROUP BY status")).scalar_one()
        plan = json.loads(plan) if isinstance(plan, str) else plan
        assert _rows_read(plan[0]["Plan"], _parents(conn), "runs") >= OLD_RUNS
