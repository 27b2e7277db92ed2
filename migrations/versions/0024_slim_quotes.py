"""slimmer quotes rows: inserted_at no longer filled, an 8-byte raw hash

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 23:45:00.000000

A quote row was ~204 B, of which 33 were its raw record's whole SHA-256 and 8 the time it was
inserted, which nothing reads (a run's own times are in runs). `inserted_at` loses its default
and its NOT NULL: new rows hold NULL there, which takes no bytes (the row's null bitmap says
so). The column itself stays for this release: the previous release's code still names it
(docs/operations.md, "expand, then contract"); a later migration drops it once no process of
that release runs. `raw_hash` stays a bytea column; the writers now store its first 8 bytes
(shared.batch.copy_format.QUOTE_HASH_BYTES) and compare the first 8 of what is stored, so the
rows written before this keep their 32 and still match. No data moves.

Each ALTER is a catalog change, but takes ACCESS EXCLUSIVE on quotes and its partitions for a
moment. Behind an open batch it would wait, and readers would queue behind it: it waits at
most LOCK_TIMEOUT a try, and tries again, up to ATTEMPTS times.
"""
from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

LOCK_TIMEOUT = "5s"
ATTEMPTS = 60


def _alter(statement: str) -> None:
    # A transaction of its own per try (outside the migration's): a try that timed out has
    # taken no lock, and the ones queued behind it went on.
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with op.get_bind().engine.begin() as conn:
                conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                conn.execute(sa.text(statement))
            return
        except sa.exc.OperationalError as exc:
            if "lock timeout" not in str(exc) or attempt == ATTEMPTS:
                raise
            log.info("quotes: waiting for open transactions to release the table (attempt %d)",
                     attempt)


def upgrade():
    with op.get_context().autocommit_block():
        _alter("ALTER TABLE quotes ALTER COLUMN inserted_at DROP DEFAULT, "
               "ALTER COLUMN inserted_at DROP NOT NULL")


def downgrade():
    with op.get_context().autocommit_block():
        # The rows written meanwhile keep their NULL (NOT NULL again would need every one of
        # them rewritten); the previous code never reads the column.
        _alter("ALTER TABLE quotes ALTER COLUMN inserted_at SET DEFAULT now()")
