"""Extensions that can be shared unbound across apps (flask-smorest's Api is per app)."""
from __future__ import annotations

from flask_migrate import Migrate

migrate = Migrate()
