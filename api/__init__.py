"""Flask API package: `create_app()` is the factory (`flask --app api`, gunicorn)."""
from api.app import create_app

__all__ = ["create_app"]
