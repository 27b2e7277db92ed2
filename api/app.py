"""The Flask application factory."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from flask import Flask
from flask_smorest import Api
from werkzeug.exceptions import HTTPException, InternalServerError

from api.broker import init_broker
from api.db import init_db
from api.envelope import init_request_ids
from api.extensions import migrate
from shared.config import Settings, get_settings
from shared.logging_setup import configure_logging

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

log = logging.getLogger(__name__)


def create_app(
    test_config: Mapping[str, Any] | None = None, settings: Settings | None = None
) -> Flask:
    """Build the API: config, database, broker client, blueprints, one error shape."""
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
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
        MAX_CONTENT_LENGTH=64 * 1024,
        JSON_SORT_KEYS=False,
    )
    if test_config:
        app.config.update(test_config)

    init_db(app, settings.database_url)
    init_broker(app, settings)
    init_request_ids(app)
    migrate.init_app(app, db=None, directory=str(MIGRATIONS_DIR))
    # One Api per app: flask-smorest keeps the spec on the instance.
    api = Api(app)
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})

    from api.resources import data, health, jobs

    for module in (data, jobs, health):
        api.register_blueprint(module.blp)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        # Anything unexpected becomes the standard 500 body: no stack trace leaves the process.
        if isinstance(exc, HTTPException):
            return api.handle_http_exception(exc)
        log.exception("unhandled error")
        return api.handle_http_exception(InternalServerError())

    return app
