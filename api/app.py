"""The Flask application factory."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from flask import Flask
from werkzeug.routing import IntegerConverter

from api.broker import init_broker
from api.cli.commands import init_cli
from api.db import init_db
from api.http.envelope import init_request_ids
from api.http.errors import JsonErrorsApi, init_error_handlers
from api.extensions import migrate
from api.http.limits import init_limits, ratelimit_defaults
from api.resources import docs_assets, index
from api.http.security import init_security_headers
from shared.config import Settings, get_settings
from shared.logging_setup import configure_logging
from shared.queries.paging import BIGINT_MAX

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

log = logging.getLogger(__name__)


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
    app = Flask(__name__)
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

    from api.resources import anomalies, backfills, data, health, history, jobs, raw, runs, stats

    for module in (data, history, raw, jobs, runs, stats, health, anomalies, backfills):
        api.register_blueprint(module.blp)
    limiter = init_limits(app, [data.blp, history.blp, raw.blp, jobs.blp, runs.blp, stats.blp,
                                anomalies.blp, backfills.blp], jobs.blp)
    # A backfill is a job's worth of upstream work: POST /backfills counts in the jobs quota.
    limiter.writes[(backfills.blp.name, "POST")] = limiter.writes[(jobs.blp.name, "POST")]
    from api.resources import metrics

    app.register_blueprint(metrics.blp)  # text, not JSON: outside the OpenAPI spec
    app.register_blueprint(index.blp)  # for people (HTML) first: outside the spec too
    from api.resources import status

    app.register_blueprint(status.blp)  # HTML pages: outside the spec, limited as reads
    app.register_blueprint(docs_assets.blp)
    init_error_handlers(app, api)
    init_cli(app)
    return app
