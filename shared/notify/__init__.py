"""Notifications: decide events from source states (policy), send them to targets (send)."""
from shared.notify.enqueue import request_evaluation
from shared.queries.notifications import notification_counts, recent_notifications
from shared.notify.policy import EVENTS, evaluate
from shared.notify.send import SendResult, send_notification
from shared.notify.targets import configured_targets

__all__ = ["EVENTS", "SendResult", "configured_targets", "evaluate", "notification_counts",
           "recent_notifications", "request_evaluation", "send_notification"]
