"""Ticks of the replay upstream on a chosen clock, API jobs in process, and disk per table.

What the storage and long-run cases share: `MovingUpstream` serves the replay payloads with
every coin's price moved and its `last_updated` set to the tick's time (so each tick is a new
quote and a new raw item, as upstream is every 300 s), `run_job` runs a job through the task
code the worker runs (create_job, execute_run per run, finalize_job), and `table_sizes` reads
heap, index and TOAST bytes per table, a partitioned table's partitions summed under it.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from sqlalchemy import Engine, text

from shared.config import Settings
from shared.db import unit_of_work
from shared.ingest.execute import execute_run
from shared.jobs.close import finalize_job
from shared.jobs.submit import create_job
from tests.upstream.server import ReplayUpstream

API_SOURCES = ("coingecko", "coinpaprika")
# The field each source's price is in (CoinPaprika's sits in quotes.USD; its key is the only
# one spelled exactly "price"), and every item's observation time.
_PRICE = {"coingecko": re.compile(r'"current_price":(-?[0-9][0-9.eE+-]*)'),
          "coinpaprika": re.compile(r'"price":(-?[0-9][0-9.eE+-]*)')}
_UPDATED = re.compile(r'"last_updated":"([^"]*)"')
# A tick's log-price step per coin (~0.5%: never near the quality checks' 10x jump).
STEP_SIGMA = 0.005


@dataclass
class _Template:
    """One item's text around its price and its last_updated, and its recorded price."""

    pieces: tuple[str, str, str]
    price_first: bool
    base: float
    millis: bool
    walk: float = 0.0


def _template(item: str, source: str) -> _Template | None:
    price, updated = _PRICE[source].search(item), _UPDATED.search(item)
    if price is None or updated is None:
        return None  # a coin without a price or time stays as recorded
    first, second = sorted((price, updated), key=lambda m: m.start(1))
    pieces = (item[:first.start(1)], item[first.end(1):second.start(1)], item[second.end(1):])
    return _Template(pieces, first is price, float(price.group(1)), "." in updated.group(1))


def stamp(at: datetime, millis: bool) -> str:
    """`at` as upstream writes last_updated (UTC, Z; CoinGecko with milliseconds)."""
    at = at.astimezone(timezone.utc)
    if millis:
        return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class MovingUpstream:
    """The replay upstream in this process, every tick a new price and time per coin."""

    coingecko: int
    coinpaprika: int
    seed: int = 24
    server: ReplayUpstream = field(init=False)
    templates: dict[str, list[tuple[str, _Template | None]]] = field(init=False)

    def __post_init__(self) -> None:
        self.server = ReplayUpstream(coingecko_total=self.coingecko,
                                     coinpaprika_total=self.coinpaprika)
        state = self.server.state
        self.rng = random.Random(self.seed)
        self.templates = {
            "coingecko": [(i, _template(i, "coingecko")) for i in state.coingecko_items],
            "coinpaprika": [(i, _template(i, "coinpaprika")) for i in state.coinpaprika_items]}

    def start(self) -> "MovingUpstream":
        """Serve on a free loopback port."""
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.server.stop()

    def env(self) -> dict[str, str]:
        """The settings pointing the sources here, their quotas lifted (the bench measures
        bytes and the clock, not the free plan's minute windows)."""
        return {"COINGECKO_BASE_URL": self.server.coingecko_base_url,
                "COINPAPRIKA_BASE_URL": self.server.coinpaprika_base_url,
                "COINGECKO_RATE_LIMIT": "1000000", "COINPAPRIKA_RATE_LIMIT": "1000000"}

    def tick(self, at: datetime) -> int:
        """Move every coin's price a step and its last_updated to `at`; the coins moved."""
        state = self.server.state
        moved = 0
        served: dict[str, list[str]] = {}
        for source, items in self.templates.items():
            out = []
            for original, tpl in items:
                if tpl is None:
                    out.append(original)
                    continue
                tpl.walk += self.rng.gauss(0.0, STEP_SIGMA)
                # repr: the shortest exact float text, as upstream's JSON writes its floats.
                price = repr(tpl.base * math.exp(tpl.walk)) if tpl.base else "0"
                when = stamp(at, tpl.millis)
                a, b = (price, when) if tpl.price_first else (when, price)
                out.append(tpl.pieces[0] + a + tpl.pieces[1] + b + tpl.pieces[2])
                moved += 1
            served[source] = out
        with state.lock:
            state.coingecko_items = served["coingecko"]
            state.coinpaprika_items = served["coinpaprika"]
        return moved


def run_job(engine: Engine, settings: Settings, sources: Iterable[str] = API_SOURCES
            ) -> dict[str, Any]:
    """One job as the worker runs it, in this process: status and each run's counters."""
    with unit_of_work(engine) as session:
        job = create_job(session, list(sources), "cli").job
        job_id, run_ids = job.id, [run.id for run in job.runs]
    for run_id in run_ids:
        execute_run(run_id, None, settings, engine)
    with unit_of_work(engine) as session:
        status = finalize_job(session, job_id)
    with engine.connect() as conn:
        runs = {r["source"]: dict(r) for r in conn.execute(text(
            "SELECT source, status, fetched, error FROM runs WHERE job_id = :id"),
            {"id": job_id}).mappings()}
    return {"job_id": job_id, "status": status, "runs": runs}


# Leaf tables (plain ones and partitions) with their root, their bytes split three ways.
_SIZES = """
SELECT coalesce(pg_partition_root(c.oid), c.oid)::regclass::text AS name,
       sum(pg_relation_size(c.oid, 'main') + pg_relation_size(c.oid, 'fsm')
           + pg_relation_size(c.oid, 'vm'))::bigint AS heap,
       sum(pg_indexes_size(c.oid))::bigint AS index,
       sum(CASE WHEN c.reltoastrelid = 0 THEN 0
                ELSE pg_total_relation_size(c.reltoastrelid) END)::bigint AS toast
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r'
GROUP BY 1
"""


def table_sizes(engine: Engine) -> dict[str, dict[str, int]]:
    """{table: {heap, index, toast, total}} in bytes (partitions summed under their parent)."""
    with engine.connect() as conn:
        rows = conn.execute(text(_SIZES)).mappings().all()
    return {r["name"]: {"heap": int(r["heap"]), "index": int(r["index"]),
                        "toast": int(r["toast"]),
                        "total": int(r["heap"]) + int(r["index"]) + int(r["toast"])}
            for r in rows}


def vacuum(engine: Engine) -> None:
    """VACUUM the database: sizes are read as they settle (visibility and free-space maps
    written, dead rows of updates reusable), not mid-way through autovacuum's work."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM"))


def grown(before: Mapping[str, Mapping[str, int]], after: Mapping[str, Mapping[str, int]]
          ) -> dict[str, dict[str, int]]:
    """Per table, the bytes `after` holds beyond `before` (tables that did not grow left out)."""
    out = {}
    for name, now in after.items():
        then = before.get(name, {})
        delta = {part: now[part] - then.get(part, 0) for part in now}
        if delta["total"] > 0:
            out[name] = delta
    return out


def per_unit(delta: Mapping[str, Mapping[str, int]], units: int) -> dict[str, float]:
    """Bytes per unit (quote, line) of each table's growth, largest first, and `all`."""
    if units <= 0:
        raise ValueError("no units to divide by")
    out = {name: d["total"] / units
           for name, d in sorted(delta.items(), key=lambda kv: -kv[1]["total"])}
    out["all"] = sum(d["total"] for d in delta.values()) / units
    return out


def utc(moment: datetime) -> datetime:
    """`moment` as aware UTC."""
    return moment.astimezone(timezone.utc)
