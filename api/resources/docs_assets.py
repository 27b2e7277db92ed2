"""Swagger UI's CSS and JS served by the app itself from the pinned swagger-ui-bundle wheel."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, send_from_directory
from swagger_ui_bundle import swagger_ui_path

# /docs must render offline: its assets come from the wheel pinned in setup.cfg, never a CDN.
ASSETS_DIR = Path(swagger_ui_path)
ASSETS_URL = "/docs/assets/"
# Only what the docs page loads (and the source maps a browser's dev tools ask for).
_SERVED = frozenset({
    "swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
    "swagger-ui.css.map", "swagger-ui-bundle.js.map", "swagger-ui-standalone-preset.js.map",
    "favicon-16x16.png", "favicon-32x32.png",
})

blp = Blueprint("docs_assets", __name__)


@blp.get(ASSETS_URL + "<path:filename>")
def asset(filename: str) -> Response:
    """One Swagger UI file from the bundled distribution."""
    if filename not in _SERVED:
        abort(404)
    response = send_from_directory(ASSETS_DIR, filename, max_age=86400)
    # The files change only with the pinned package version, i.e. with a deploy.
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response
