"""Send one recorded notification with a short timeout and record how it went."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import requests
from sqlalchemy import Engine

from shared.config import Settings
from shared.db import unit_of_work
from shared.models import Notification
from shared.notify.targets import APPRISE, BODIES, configured_targets

log = logging.getLogger(__name__)
# urllib3 logs each request's path and query at DEBUG: for a webhook those are the secret.
logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)
# apprise names its URLs (secrets) in debug lines.
logging.getLogger("apprise").setLevel(logging.WARNING)


@dataclass(frozen=True)
class SendResult:
    """How one attempt went: `status` sent or failed, and whether a retry may help."""

    status: str
    retry: bool
    error: str | None = None


def _post(url: str, body: dict[str, object], timeout: float) -> str | None:
    """POST `body`; None when delivered, else a short error that never holds the URL."""
    try:
        response = requests.post(url, json=body, timeout=(timeout, timeout),
                                 allow_redirects=False)
    except requests.RequestException as exc:
        return type(exc).__name__  # its message names the URL, a secret
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


def _apprise(urls: str, body: dict[str, Any]) -> str | None:
    """Notify every apprise URL (each plugin keeps its own short socket timeouts)."""
    import apprise  # only senders need it

    client = apprise.Apprise()
    if not client.add(urls.replace(",", " ").split()):
        return "apprise: no valid URL"
    return None if client.notify(**body) else "apprise: not delivered"


def send_notification(engine: Engine, notification_id: int, settings: Settings) -> SendResult:
    """Deliver notification `notification_id` once (no transaction held while sending)."""
    with unit_of_work(engine) as session:
        n = session.get(Notification, notification_id)
        if n is None:
            return SendResult("failed", False, "no such notification")
        if n.status == "sent":  # a redelivered task: already done
            return SendResult("sent", False)
        session.expunge(n)
    url = configured_targets(settings).get(n.target)
    if url is None:
        error: str | None = "target not configured"
    elif n.target == APPRISE:
        error = _apprise(url, BODIES[n.target](n))
    else:
        error = _post(url, BODIES[n.target](n), settings.notify_timeout_seconds)
    now = datetime.now(timezone.utc)
    with unit_of_work(engine) as session:
        row = session.get(Notification, notification_id)
        assert row is not None
        row.attempts += 1
        row.status, row.error = ("sent", None) if error is None else ("failed", error)
        if error is None:
            row.sent_at = now
    log.info("notification %s (%s %s) to %s: %s", notification_id, n.source, n.event,
             n.target, error or "sent")
    # A refusal (4xx) will not change on retry, except a rate limit.
    refused = error is not None and error.startswith("HTTP 4") and error != "HTTP 429"
    return SendResult("sent" if error is None else "failed",
                      retry=error is not None and url is not None and not refused, error=error)
