"""The one advisory-lock key space: every PostgreSQL advisory lock the project takes, by kind.

A key is the two-int4 form `(namespace, object)`: the namespace says what kind of thing is
locked, so keys of two kinds can never meet, and pg_locks shows it as `classid` (with the
object as `objid`, `objsubid` 2). Only this module picks a key. A namespace's number is part
of the contract between running processes: never renumber or reuse one (old and new workers
would no longer exclude each other during a rolling update).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import IntEnum

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session


class Namespace(IntEnum):
    """What a key locks; the lock's scope (session or transaction) follows from the kind."""

    # Session locks, held on a connection of their own for as long as the execution lives,
    # so they go away with a killed worker's connection; the reaper takes them to tell a run
    # whose execution is gone from one that is merely slow.
    EXTRACT_RUN = 1  # one live execution of a source's extract runs (object: the source)
    BACKFILL_RUN = 2  # one live backfill execution per source (object: the source)
    BACKFILL = 3  # one execution of one backfill at a time (object: the backfill id)
    # Transaction locks, released with the commit.
    IDENTITY = 4  # new asset mappings are decided one transaction at a time
    NOTIFY = 5  # notification evaluations are decided one at a time
    PARTITIONS = 6  # a table's partitions are created one transaction at a time (object: table)
    # A session lock again: held for a maintenance run's key rebuilds (shared.storage.compaction).
    COMPACTION = 7  # one run rebuilding closed partitions' keys at a time (object: 0)


@dataclass(frozen=True)
class LockKey:
    """One advisory lock: its namespace and the object within it (both int4, >= 0)."""

    namespace: Namespace
    object: int


# An object number is 31 bits, so it reads the same as the signed int4 PostgreSQL takes and
# as the unsigned `objid` pg_locks shows. A name is hashed; two names sharing a hash would
# only share a lock (one waits for the other), never break one.
_OBJECT_MASK = 0x7FFFFFFF

_RUN_NAMESPACES = {"extract": Namespace.EXTRACT_RUN, "backfill": Namespace.BACKFILL_RUN}

IDENTITY_LOCK = LockKey(Namespace.IDENTITY, 0)
NOTIFY_LOCK = LockKey(Namespace.NOTIFY, 0)
COMPACTION_LOCK = LockKey(Namespace.COMPACTION, 0)


def _name_object(name: str) -> int:
    return zlib.crc32(name.encode()) & _OBJECT_MASK


def run_lock(kind: str, source: str) -> LockKey:
    """The lock one live execution of `source`'s runs of `kind` (models.RUN_KINDS) holds."""
    return LockKey(_RUN_NAMESPACES[kind], _name_object(source))


def backfill_lock(backfill_id: int) -> LockKey:
    """The lock one execution of backfill `backfill_id` holds (ids 2^31 apart share one)."""
    return LockKey(Namespace.BACKFILL, backfill_id & _OBJECT_MASK)


def partition_lock(table: str) -> LockKey:
    """The lock a transaction creating partitions of `table` holds (shared.storage.partitions)."""
    return LockKey(Namespace.PARTITIONS, _name_object(table))


def _params(key: LockKey) -> dict[str, int]:
    return {"ns": int(key.namespace), "obj": key.object}


def try_lock(conn: Connection, key: LockKey) -> bool:
    """Take a session lock on `conn` without waiting; whether it was free (commits `conn`)."""
    got = conn.execute(text("SELECT pg_try_advisory_lock(:ns, :obj)"), _params(key))
    value = bool(got.scalar())
    conn.commit()
    return value


def unlock(conn: Connection, key: LockKey) -> None:
    """Release a session lock taken by try_lock on the same connection (commits `conn`)."""
    conn.execute(text("SELECT pg_advisory_unlock(:ns, :obj)"), _params(key))
    conn.commit()


def lock_for_transaction(session: Session | Connection, key: LockKey) -> None:
    """Wait for a transaction lock, held until the session's (connection's) transaction ends."""
    session.execute(text("SELECT pg_advisory_xact_lock(:ns, :obj)"), _params(key))
