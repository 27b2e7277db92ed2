"""The Flask application factory."""
from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, NamedTuple

from flask import Flask
from werkzeug.routing import IntegerConverter

from api.broker import init_broker
from api.cli.commands import init_cli
from api.db import ReplicaAwareFlask, init_db
from api.http.envelope import init_request_ids
from api.http.errors import JsonErrorsApi, init_error_handlers
from api.extensions import migrate
from api.http.limits import init_limits, ratelimit_defaults
from api.resources import (
    anomalies,
    backfills,
    data,
    docs_assets,
    health,
    history,
    index,
    jobs,
    metrics,
    raw,
    runs,
    stats,
    status,
)
from api.http.security import init_security_headers
from shared.config import Settings, get_settings
from shared.logging_setup import configure_logging
from shared.queries.paging import BIGINT_MAX

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

log = logging.getLogger(__name__)


class Resource(NamedTuple):
    """How the app serves a resource module's blueprint (`blp`)."""

    module: ModuleType
    # JSON, in the OpenAPI spec; else beside it (Prometheus text, HTML, Swagger UI's files).
    in_spec: bool
    # Its reads count against API_READ_RATE_LIMIT (api/http/limits.py).
    reads_counted: bool
    # Its POSTs count against API_JOBS_RATE_LIMIT, after authentication (api/http/auth.py).
    job_quota: bool = False


# Every resource, in the order the app registers them.
RESOURCES = (
    Resource(data, True, True),
    Resource(history, True, True),
    Resource(raw, True, True),
    Resource(jobs, True, True, job_quota=True),
    Resource(runs, True, True),
    Resource(stats, True, True),
    Resource(health, True, True),
    Resource(anomalies, True, True),
    # A backfill is a job's worth of upstream work: POST /backfills counts in the jobs quota.
    Resource(backfills, True, True, job_quota=True),
    Resource(metrics, False, True),
    Resource(index, False, False),  # the links page for people
    Resource(status, False, True),
    Resource(docs_assets, False, False),
)


class IdConverter(IntegerConverter):
    """A positive database id (1 .. 2**63-1); anything else does not match the route (404)."""

    def __init__(self, map: Any, *args: Any, **kwargs: Any) -> None:  # noqa: A002
        super().__init__(map, min=1, max=BIGINT_MAX)


def _id_param_schema(_converter: Any) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX}


def create_app(
    test_config: Mapping[str, Any] | None = None, settings: Settings | None = None
) -> Flask:
    """Build the API: config, database, broker client, limits, blueprints, one error shape."""
    settings = settings or get_settings()
    configure_logging(settings)
    # Reads that fail on a read replica run again on the primary (api/db.py).
    app = ReplicaAwareFlask(__name__)
    app.config.update(
        SETTINGS=settings,
        API_TITLE="Kasparro crypto ETL",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        # Swagger UI's files from the pinned swagger-ui-bundle wheel, served by this app: /docs
        # works offline. No online spec validator either (it would call validator.swagger.io).
        OPENAPI_SWAGGER_UI_URL=docs_assets.ASSETS_URL,
        OPENAPI_SWAGGER_UI_CONFIG={"validatorUrl": None},
        MAX_CONTENT_LENGTH=64 * 1024,
        JSON_SORT_KEYS=False,
        # Replies to a broadcast ping over Redis arrive on a polling cycle: with 0.5 s about
        # every other ping came back empty although the worker was alive.
        HEALTH_WORKER_PING_TIMEOUT=1.0,
        HEALTH_WORKERS_CACHE_SECONDS=5.0,
    )
    if test_config:
        app.config.update(test_config)
    ratelimit_defaults(app, settings.redis_url)

    init_db(app, settings.database_url)
    init_broker(app, settings)
    init_request_ids(app)
    init_security_headers(app)
    migrate.init_app(app, db=None, directory=str(MIGRATIONS_DIR))
    app.url_map.converters["id"] = IdConverter
    # One Api per app: flask-smorest keeps the spec on the instance.
    api = JsonErrorsApi(app)
    api.register_converter(IdConverter, _id_param_schema)
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})

    for resource in RESOURCES:
        register = api.register_blueprint if resource.in_spec else app.register_blueprint
        register(resource.module.blp)
    init_limits(app, [r.module.blp for r in RESOURCES if r.reads_counted],
                [r.module.blp for r in RESOURCES if r.job_quota])
    init_error_handlers(app, api)
    init_cli(app)
    return app
