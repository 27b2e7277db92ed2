"""Where messages go: targets named in Settings (URLs are secrets) and each one's JSON body."""
from __future__ import annotations

from typing import Any

from shared.config import Settings
from shared.models import Notification

SLACK, WEBHOOK, APPRISE = "slack", "webhook", "apprise"
_HEADLINES = {
    "failed": "{source} failed", "partial": "{source} ended partial",
    "stale": "{source} is stale", "recovered": "{source} recovered",
    "escalated": "{source} keeps failing ({failures} in a row)",
    "reminder": "{source} is still {state}",
    "storage_low": "{source} is running low: the disk budget is near",
}
_EMOJI = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":white_check_mark:"}


def configured_targets(settings: Settings) -> dict[str, str]:
    """Target name -> URL for every target the environment configures (never log the URL)."""
    targets = {SLACK: settings.slack_webhook_url, WEBHOOK: settings.alert_webhook_url,
               APPRISE: settings.apprise_urls}
    return {name: url for name, url in targets.items() if url}


def headline(n: Notification) -> str:
    """One line saying what happened, e.g. `coingecko failed`."""
    return _HEADLINES[n.event].format(source=n.source, state=n.state,
                                      failures=n.consecutive_failures)


def _slack_escape(value: str) -> str:
    # Slack mrkdwn control characters: a stored error cannot form links or mentions.
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webhook_body(n: Notification) -> dict[str, Any]:
    """The generic JSON: source, event, run/job ids, the short error, and a readable text."""
    return {
        "source": n.source, "event": n.event, "state": n.state, "severity": n.severity,
        "run_id": n.run_id, "job_id": n.job_id, "error": n.detail,
        "consecutive_failures": n.consecutive_failures, "notification_id": n.id,
        "at": n.created_at.isoformat() if n.created_at else None, "text": headline(n),
    }


def slack_body(n: Notification) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` (the notification fallback) and `blocks`."""
    title = f"{_EMOJI.get(n.severity, '')} *{_slack_escape(headline(n))}*".strip()
    ids = f"run {n.run_id}, job {n.job_id}" if n.run_id else "no run yet"
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": title}}]
    if n.detail:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": f"```{_slack_escape(n.detail)}```"}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _slack_escape(
        f"{n.severity} · {n.state} · {ids} · {n.consecutive_failures} consecutive failures")}]})
    text = headline(n) + (f": {n.detail}" if n.detail else "")
    return {"text": text, "blocks": blocks}


def apprise_body(n: Notification) -> dict[str, Any]:
    """Title and body for apprise, which formats them for each service it knows."""
    body = [n.detail] if n.detail else []
    body.append(f"{n.severity}, {n.state}, run {n.run_id}, job {n.job_id}, "
                f"{n.consecutive_failures} consecutive failures")
    return {"title": f"Kasparro: {headline(n)}", "body": "\n".join(body),
            "notify_type": {"info": "success", "warning": "warning"}.get(n.severity, "failure")}


BODIES = {SLACK: slack_body, WEBHOOK: webhook_body, APPRISE: apprise_body}
