"""data version moves only when current_quotes rows change; run_assets drained (no longer written)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 16:30:00.000000

Quotes are now published into current_quotes by the batch that stores them, in its own
transaction (shared.ingest.publish), instead of by the job's normalize step from run_assets. Two
consequences here:

- The data version (migration 0004) moved on every statement on current_quotes, even one
  that changed no row. Every batch that stores quotes now issues a publish, and the API's
  /data cache must survive the ones that change nothing, so the INSERT, UPDATE and DELETE
  triggers look at the statement's transition table and bump only when it holds a row.
  TRUNCATE keeps the old unconditional trigger (it has no transition table).
- Assets noted in run_assets by runs whose job was never normalized are published now, and
  the notes deleted. Nothing writes run_assets any more; the table stays (empty) for now.
"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_ON_CHANGE = """
CREATE FUNCTION bump_data_version_on_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bumped bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM changed) THEN
        INSERT INTO data_version (id, version, changed_at)
        VALUES (1, nextval('data_version_seq'), now())
        ON CONFLICT (id) DO UPDATE
            SET version = excluded.version, changed_at = excluded.changed_at
        RETURNING version INTO bumped;
        PERFORM pg_notify('data_version', bumped::text);
    END IF;
    RETURN NULL;
END
$$
"""

_DRAIN_RUN_ASSETS = """
INSERT INTO current_quotes AS cur (asset_id, source, symbol, name, source_asset_id,
    observed_at, price_usd, market_cap_usd, volume_24h_usd, rank, updated_at)
SELECT q.asset_id, q.source, a.symbol, a.name, q.source_asset_id, q.observed_at,
    q.price_usd, q.market_cap_usd, q.volume_24h_usd, q.rank, now()
FROM (SELECT DISTINCT ra.asset_id, r.source
      FROM run_assets ra JOIN runs r ON r.id = ra.run_id) touched
CROSS JOIN LATERAL (
    SELECT * FROM quotes q
    WHERE q.asset_id = touched.asset_id AND q.source = touched.source
    ORDER BY q.observed_at DESC LIMIT 1
) q
JOIN assets a ON a.id = q.asset_id
ON CONFLICT (asset_id, source) DO UPDATE SET
    symbol = excluded.symbol, name = excluded.name,
    source_asset_id = excluded.source_asset_id, observed_at = excluded.observed_at,
    price_usd = excluded.price_usd, market_cap_usd = excluded.market_cap_usd,
    volume_24h_usd = excluded.volume_24h_usd, rank = excluded.rank, updated_at = now()
WHERE excluded.observed_at > cur.observed_at
"""


def upgrade():
    op.execute("DROP TRIGGER current_quotes_bump_data_version ON current_quotes")
    op.execute(_ON_CHANGE)
    for event, table in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
        op.execute(
            f"CREATE TRIGGER current_quotes_{event.lower()}_bumps_data_version "
            f"AFTER {event} ON current_quotes REFERENCING {table} TABLE AS changed "
            "FOR EACH STATEMENT EXECUTE FUNCTION bump_data_version_on_change()"
        )
    op.execute(
        "CREATE TRIGGER current_quotes_truncate_bumps_data_version "
        "AFTER TRUNCATE ON current_quotes "
        "FOR EACH STATEMENT EXECUTE FUNCTION bump_data_version()"
    )
    op.execute(_DRAIN_RUN_ASSETS)
    op.execute("DELETE FROM run_assets")


def downgrade():
    for event in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER current_quotes_{event}_bumps_data_version ON current_quotes")
    op.execute("DROP FUNCTION bump_data_version_on_change()")
    op.execute(
        "CREATE TRIGGER current_quotes_bump_data_version "
        "AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON current_quotes "
        "FOR EACH STATEMENT EXECUTE FUNCTION bump_data_version()"
    )
