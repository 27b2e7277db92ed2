"""CPU seconds spent by a database's server backends, read from /proc (local servers only)."""
from __future__ import annotations

import os

from sqlalchemy import Engine, text


def backend_cpu_seconds(engine: Engine, database: str) -> float | None:
    """User + system CPU of every backend connected to `database`; None if /proc can't tell.

    Only meaningful for a server on this machine, and only for backends alive at both reads
    (the pipeline keeps its pooled connections open until it has been measured).
    """
    with engine.connect() as conn:
        pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :d"),
                            {"d": database}).scalars().all()
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total
