"""Helpers for API tests: load real data through the real pipeline, checksum tables."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from flask import Flask, g
from sqlalchemy import Engine, text

from api.http.envelope import envelope
from api.schemas.data import DataEnvelopeSchema

from shared.config import Settings, load_settings
from shared.db import unit_of_work
from shared.jobs.close import finalize_job
from shared.jobs.submit import create_job
from shared.ingest.execute import execute_run
from tests.conftest import TABLES
from tests.upstream import ReplayUpstream


@dataclass
class Loaded:
    """A database filled once per test module: real CSVs plus recorded API pages."""

    engine: Engine
    settings: Settings
    job: dict[str, Any]
    client: Any


def replay_settings(base_env: dict[str, str], csv_dir: Path, upstream: ReplayUpstream,
                    **extra: str) -> Settings:
    """Settings whose API sources point at the replay upstream (generous quotas)."""
    return load_settings({
        **base_env, "CSV_DIR": str(csv_dir),
        "COINGECKO_BASE_URL": upstream.coingecko_base_url,
        "COINPAPRIKA_BASE_URL": upstream.coinpaprika_base_url,
        "HTTP_TIMEOUT_SECONDS": "2", "HTTP_MAX_RETRIES": "2",
        "COINGECKO_RATE_LIMIT": "1000", "COINGECKO_RATE_PERIOD_SECONDS": "1",
        "COINPAPRIKA_RATE_LIMIT": "1000", "COINPAPRIKA_RATE_PERIOD_SECONDS": "1",
        **extra,
    })


def run_sources(engine: Engine, settings: Settings, sources: list[str]) -> dict[str, Any]:
    """One job over `sources`, each run executed in-process, then finalized; returns the job."""
    with unit_of_work(engine) as session:
        job = create_job(session, sources, "cli").job
        run_ids, job_id = [r.id for r in job.runs], job.id
    for run_id in run_ids:
        execute_run(run_id, None, settings, engine)
    with unit_of_work(engine) as session:
        finalize_job(session, job_id)
    with engine.connect() as conn:
        job_row = dict(conn.execute(text("SELECT * FROM jobs WHERE id = :id"),
                                    {"id": job_id}).mappings().one())
        job_row["runs"] = [dict(r) for r in conn.execute(
            text("SELECT * FROM runs WHERE job_id = :id ORDER BY id"), {"id": job_id}
        ).mappings()]
    return job_row


def coins_csv(first: int, count: int, symbol_prefix: str = "C", day: int = 1,
              price_prefix: str = "1.") -> str:
    """Kaggle-format rows for `count` distinct coins numbered from `first`."""
    return "".join(
        f"{i},Coin{symbol_prefix}{i},{symbol_prefix}{i},2021-01-{day:02d} 23:59:59,2,1,1,"
        f"{price_prefix}{i},10,100\n"
        for i in range(first, first + count)
    )


def table_checksums(engine: Engine) -> dict[str, str]:
    """Row count and an md5 of every table's full contents (order-independent)."""
    sums = {}
    with engine.connect() as conn:
        for table in TABLES:
            rows = conn.execute(text(f"SELECT t::text FROM {table} t")).scalars().all()
            digest = hashlib.md5()
            for row in sorted(rows):
                digest.update(row.encode())
            sums[table] = f"{len(rows)}:{digest.hexdigest()}"
    return sums


def without_dynamic(body: bytes) -> bytes:
    """The body with its per-request values (latency, request id) blanked."""
    body = re.sub(rb'"api_latency_ms":[0-9.e+-]+', b'"api_latency_ms":0', body)
    return re.sub(rb'"request_id":"[^"]*"', b'"request_id":""', body)


def schema_path_body(app: Flask, url: str, body: dict[str, Any]) -> bytes:
    """What the documented path makes of a GET /data answer's `body` (request id req-1): its
    records as model values through the marshmallow schema, jsonify'd by the app."""
    with app.test_request_context(url):
        g.request_id, g.request_started = "req-1", 0.0
        expected = envelope(body["data"], body["pagination"]["page"],
                            body["pagination"]["page_size"], body["pagination"]["total"],
                            body["pagination"]["next_cursor"])
        expected["api_latency_ms"] = body["api_latency_ms"]
        dumped = DataEnvelopeSchema().dump(
            {**expected, "data": [_as_model_values(r) for r in body["data"]]})
        return app.json.response(dumped).get_data()


def _as_model_values(record: dict[str, Any]) -> dict[str, Any]:
    values = dict(record)
    for name in ("price_usd", "market_cap_usd", "volume_24h_usd"):
        values[name] = None if record[name] is None else Decimal(record[name])
    values["observed_at"] = datetime.fromisoformat(record["observed_at"])
    return values
