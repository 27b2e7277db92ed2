"""Logging for every process: one format, and secrets scrubbed from every record."""
from __future__ import annotations

import logging
import sys

from shared.config import Settings

_REDACTED = "[REDACTED]"


def redact(message: str, settings: Settings) -> str:
    """`message` with every configured secret value replaced."""
    for secret in settings.redacted_secrets():
        message = message.replace(secret, _REDACTED)
    return message


class RedactingFilter(logging.Filter):
    """Rewrites each record so that no secret reaches a handler."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message once, scrub it, and keep the record."""
        if self.settings.redacted_secrets():
            rendered = record.getMessage()
            scrubbed = redact(rendered, self.settings)
            if scrubbed != rendered:
                record.msg, record.args = scrubbed, None
        return True


def configure_logging(settings: Settings) -> None:
    """Install the format, the level and the secret filter on the root logger (idempotent)."""
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    if not any(getattr(h, "_kasparro", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"))
        handler._kasparro = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for existing in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in existing.filters):
            existing.addFilter(RedactingFilter(settings))
