"""layer counters and storage samples for flat-cost stats

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 19:40:00.000000

/stats, /metrics, /status and /health read counts kept by the writers instead of counting the
tables that grow every day (shared.storage.counters): `layer_counts` holds deltas per (source,
layer), inserted in the writers' own transactions and folded hourly. Quotes and raw records are
added by the batch writer (it knows how many went in); rejects, anomalies, drift events, runs
(per kind and status, upstream requests, durations) and quotes stored with a flag set by
triggers on their tables, so every writer of those counts, whatever its code. The upgrade seeds
the counts from the tables once (a scan of each, under a SHARE lock so that no write slips
between the count and the triggers: writers wait for it). `storage_samples` keeps the database's
size each hour. Three indexes of runs let the reads of a source's newest runs and errors and of
the last day's runs take ranges, not the table.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None

# What each row of these tables counts as, per source (statement triggers: one insert of a
# few grouped rows per statement, however many rows it wrote).
_COUNTED = {
    "rejected_records": "'rejected'",
    "anomalies": "'anomaly:' || kind",
    "drift_events": "CASE WHEN mapped THEN 'drift:mapped' ELSE 'drift:unmapped' END",
}
# A run's figures, each a (layer, n) of its source; a change of a run adds its new figures
# and subtracts its old ones.
_RUN_FIGURES = """
CREATE FUNCTION layer_counts_run_figures(r runs)
RETURNS TABLE(source text, layer text, n numeric) LANGUAGE sql IMMUTABLE AS $$
SELECT r.source, v.layer, v.n FROM (VALUES
    ('runs:' || r.kind || ':' || r.status, 1::numeric),
    ('http_requests', r.http_requests::numeric),
    ('http_retries', r.http_retries::numeric),
    ('rate_limit_waits', r.rate_limit_waits::numeric),
    ('rate_limit_wait_seconds', r.rate_limit_wait_seconds::numeric),
    ('succeeded_ms:' || r.kind, CASE WHEN r.status = 'succeeded' AND r.started_at IS NOT NULL
        AND r.finished_at IS NOT NULL
        THEN extract(epoch FROM r.finished_at - r.started_at) * 1000 ELSE 0 END),
    ('succeeded_timed:' || r.kind, CASE WHEN r.status = 'succeeded'
        AND r.started_at IS NOT NULL AND r.finished_at IS NOT NULL THEN 1 ELSE 0 END)
) AS v(layer, n) WHERE r.source IS NOT NULL AND v.n <> 0
$$
"""
_RUN_TRIGGER = """
CREATE FUNCTION layer_counts_runs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO layer_counts (source, layer, n)
    SELECT d.source, d.layer, sum(d.n) FROM (
        SELECT f.source, f.layer, f.n FROM layer_counts_run_figures(NEW) f
        WHERE TG_OP <> 'DELETE'
        UNION ALL
        SELECT f.source, f.layer, -f.n FROM layer_counts_run_figures(OLD) f
        WHERE TG_OP <> 'INSERT'
    ) d GROUP BY d.source, d.layer HAVING sum(d.n) <> 0;
    RETURN NULL;
END $$;
CREATE TRIGGER layer_counts AFTER INSERT OR DELETE OR UPDATE OF
    source, kind, status, http_requests, http_retries, rate_limit_waits,
    rate_limit_wait_seconds, started_at, finished_at
ON runs FOR EACH ROW EXECUTE FUNCTION layer_counts_runs()
"""
# Quotes stored with a flag set (the status page's flagged quotes): each change of a set's
# `quotes` (a batch adding its quotes, retention subtracting dropped ones) moves the count.
_FLAG_SETS_TRIGGER = """
CREATE FUNCTION layer_counts_flag_sets() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO layer_counts (source, layer, n)
    SELECT d.source, 'flagged', sum(d.n) FROM (
        SELECT NEW.source AS source, NEW.quotes::numeric AS n WHERE TG_OP <> 'DELETE'
        UNION ALL
        SELECT OLD.source, -OLD.quotes::numeric WHERE TG_OP <> 'INSERT'
    ) d GROUP BY d.source HAVING sum(d.n) <> 0;
    RETURN NULL;
END $$;
CREATE TRIGGER layer_counts AFTER INSERT OR DELETE OR UPDATE OF source, quotes
ON flag_sets FOR EACH ROW EXECUTE FUNCTION layer_counts_flag_sets()
"""
_ROWS_TRIGGER = """
CREATE FUNCTION layer_counts_{table}_{op}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO layer_counts (source, layer, n)
    SELECT source, {layer}, {sign} count(*) FROM changed GROUP BY 1, 2;
    RETURN NULL;
END $$;
CREATE TRIGGER layer_counts_{op} AFTER {event} ON {table}
REFERENCING {kind} TABLE AS changed FOR EACH STATEMENT
EXECUTE FUNCTION layer_counts_{table}_{op}()
"""
_OPS = (("insert", "INSERT", "NEW", ""), ("delete", "DELETE", "OLD", "-"))


def _seed_sql(conn: sa.Connection) -> str:
    """Every count, from the tables (raw: whichever raw tables this schema has)."""
    parts = ["SELECT source, 'quotes', count(*) FROM quotes GROUP BY 1",
             "SELECT source, 'raw', sum(cardinality(line_numbers)) FROM raw_line_blocks "
             "GROUP BY 1"]
    if conn.execute(sa.text("SELECT to_regclass('raw_records')")).scalar() is not None:
        parts.append("SELECT source, 'raw', count(*) FROM raw_records GROUP BY 1")
    if conn.execute(sa.text("SELECT to_regclass('raw_item_blocks')")).scalar() is not None:
        parts.append("SELECT source, 'raw', sum(items) FROM raw_item_blocks GROUP BY 1")
    parts += [f"SELECT source, {layer}, count(*) FROM {table} GROUP BY 1, 2"
              for table, layer in _COUNTED.items()]
    parts.append("SELECT source, 'flagged', sum(quotes) FROM flag_sets GROUP BY 1")
    parts.append("SELECT f.source, f.layer, sum(f.n) FROM runs r, "
                 "layer_counts_run_figures(r) f GROUP BY 1, 2")
    return ("INSERT INTO layer_counts (source, layer, n) SELECT source, layer, sum(n) FROM ("
            + " UNION ALL ".join(parts) + ") AS c(source, layer, n) GROUP BY 1, 2")


def upgrade() -> None:
    """The two tables, the triggers, then the counts of what is stored already."""
    op.create_table(
        "layer_counts",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("layer", sa.String(length=64), nullable=False),
        sa.Column("n", sa.Numeric(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_layer_counts")),
    )
    op.create_table(
        "storage_samples",
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("database_bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sampled_at", name=op.f("pk_storage_samples")),
    )
    # A source's newest runs and errors, the last day's runs: reads of bounded ranges.
    op.create_index("ix_runs_source_created", "runs", ["source", "created_at"])
    op.create_index("ix_runs_source_errors", "runs", ["source", "created_at"],
                    postgresql_where=sa.text("error IS NOT NULL"))
    op.create_index("ix_runs_created", "runs", ["created_at"])
    conn = op.get_bind()
    tables = ["quotes", "raw_line_blocks", "runs", "flag_sets", *_COUNTED]
    tables += [t for t in ("raw_records", "raw_item_blocks")
               if conn.execute(sa.text(f"SELECT to_regclass('{t}')")).scalar() is not None]
    # No write may commit between the counts below and the triggers (or the new writers).
    op.execute(f"LOCK TABLE {', '.join(tables)} IN SHARE MODE")
    op.execute(_RUN_FIGURES)
    op.execute(_RUN_TRIGGER)
    op.execute(_FLAG_SETS_TRIGGER)
    for table, layer in _COUNTED.items():
        for name, event, kind, sign in _OPS:
            op.execute(_ROWS_TRIGGER.format(table=table, op=name, event=event, kind=kind,
                                            sign=sign, layer=layer))
    op.execute(_seed_sql(conn))


def downgrade() -> None:
    """Drop the triggers, their functions and both tables."""
    for table in _COUNTED:
        for name, *_rest in _OPS:
            op.execute(f"DROP TRIGGER IF EXISTS layer_counts_{name} ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS layer_counts_{table}_{name}()")
    op.execute("DROP TRIGGER IF EXISTS layer_counts ON flag_sets")
    op.execute("DROP FUNCTION IF EXISTS layer_counts_flag_sets()")
    op.execute("DROP TRIGGER IF EXISTS layer_counts ON runs")
    op.execute("DROP FUNCTION IF EXISTS layer_counts_runs()")
    op.execute("DROP FUNCTION IF EXISTS layer_counts_run_figures(runs)")
    for index in ("ix_runs_source_created", "ix_runs_source_errors", "ix_runs_created"):
        op.drop_index(index, table_name="runs")
    op.drop_table("storage_samples")
    op.drop_table("layer_counts")
