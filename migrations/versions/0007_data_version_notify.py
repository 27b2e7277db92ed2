"""data version: each bump also notifies channel data_version (payload: the new version)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 23:00:00.000000

The API read the data version by primary key on every GET /data to know whether its answer
cache still held (migration 0004). Under 64 connections on 2 cores that one round trip cost
about a quarter of /data's throughput (`make bench`: ~1,500 -> ~2,050 req/s without it), so
each API process now LISTENs instead and reads the version only when a notification says it
moved (and once a second regardless, api/db.py). NOTIFY is transactional: the notification is
delivered when, and only if, the bumping transaction commits; several bumps in one transaction
arrive in order, the last one carrying the committed value.
"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_FUNCTION = """
CREATE OR REPLACE FUNCTION bump_data_version() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bumped bigint;
BEGIN
    -- An upsert, so that even a deleted row comes back (with a never-used value).
    INSERT INTO data_version (id, version, changed_at)
    VALUES (1, nextval('data_version_seq'), now())
    ON CONFLICT (id) DO UPDATE
        SET version = excluded.version, changed_at = excluded.changed_at
    RETURNING version INTO bumped;
    {notify}
    RETURN NULL;
END
$$
"""


def upgrade():
    op.execute(_FUNCTION.format(notify="PERFORM pg_notify('data_version', bumped::text);"))


def downgrade():
    op.execute(_FUNCTION.format(notify=""))
