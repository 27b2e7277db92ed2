"""data version: one row that changes, in the same transaction, whenever current_quotes does

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 06:00:00.000000

GET /data serves current_quotes, which only changes when normalize publishes. The API keeps a
per-process cache of /data answers keyed by this row's `version`, read by primary key on every
request (one index lookup, ~0.1 ms). A statement-level trigger on current_quotes (INSERT,
UPDATE, DELETE and TRUNCATE) bumps the row in the writing transaction, so the new version
becomes visible exactly when the new rows do: the first request after the commit misses the
cache and reads the new data. A trigger rather than a call in the publishing code, so that no
writer (a manual fix, a TRUNCATE in tests) can change current_quotes without invalidating.

The values come from a sequence: a sequence never hands out a value twice (even across a
rollback, or if the row were deleted and recreated), so a version can never come back and
match a cache entry of older data. Concurrent publishers are serialized by the row lock
until commit.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'data_version',
        sa.Column('id', sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.Column('changed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.CheckConstraint('id = 1', name=op.f('ck_data_version_single_row')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_data_version')),
    )
    op.execute("CREATE SEQUENCE data_version_seq")
    op.execute("INSERT INTO data_version (id, version) VALUES (1, nextval('data_version_seq'))")
    op.execute(
        """
        CREATE FUNCTION bump_data_version() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- An upsert, so that even a deleted row comes back (with a never-used value).
            INSERT INTO data_version (id, version, changed_at)
            VALUES (1, nextval('data_version_seq'), now())
            ON CONFLICT (id) DO UPDATE
                SET version = excluded.version, changed_at = excluded.changed_at;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER current_quotes_bump_data_version "
        "AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON current_quotes "
        "FOR EACH STATEMENT EXECUTE FUNCTION bump_data_version()"
    )


def downgrade():
    op.execute("DROP TRIGGER current_quotes_bump_data_version ON current_quotes")
    op.execute("DROP FUNCTION bump_data_version()")
    op.drop_table('data_version')
    op.execute("DROP SEQUENCE data_version_seq")
