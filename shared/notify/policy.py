"""When to tell: one message per change of state, a reminder after an interval, escalation."""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.locks import NOTIFY_LOCK, lock_for_transaction
from shared.queries.freshness import FAILING, FRESH, STALE, SourceState, source_states
from shared.models import AlertState, Notification
from shared.notify.targets import configured_targets

EVENTS = ("failed", "partial", "stale", "recovered", "escalated", "reminder")


@dataclass(frozen=True)
class Decision:
    """An event to send (or None) and the alert state to keep."""

    event: str | None
    severity: str
    escalated: bool
    state_changed: bool


def decide(previous: AlertState | None, current: SourceState, now: datetime,
           reminder_seconds: int, escalate_after: int) -> Decision:
    """The dedupe rule. A source first seen counts as previously fresh, so a fresh one says
    nothing and a stale or failing one is told once."""
    before = previous.state if previous is not None else FRESH
    failures = current.consecutive_failures
    escalate = current.state == FAILING and failures >= escalate_after
    if current.state != before:
        if current.state == FRESH:
            return Decision("recovered", "info", False, True)
        if current.state == STALE:
            return Decision("stale", "warning", False, True)
        event = "partial" if current.last_run_status == "partial" else "failed"
        return Decision(event, "critical" if escalate else "warning", escalate, True)
    if current.state == FRESH or previous is None:
        return Decision(None, "info", False, False)
    if escalate and not previous.escalated:
        return Decision("escalated", "critical", True, False)
    last = previous.last_notified_at
    if last is None or now - last >= timedelta(seconds=reminder_seconds):
        return Decision("reminder", "critical" if previous.escalated else "warning",
                        previous.escalated, False)
    return Decision(None, "warning", previous.escalated, False)


def _detail(state: SourceState) -> str | None:
    if state.state == FAILING:
        return state.last_error
    if state.state == STALE:
        if state.age_seconds is None:
            return f"no success yet (objective {state.objective_seconds} s)"
        return (f"last success {state.age_seconds:.0f} s ago "
                f"(objective {state.objective_seconds} s)")
    return None


def _with_grace(current: SourceState, previous: AlertState | None, now: datetime
                ) -> SourceState:
    """A source that never succeeded counts as fresh for one objective after it is first seen:
    a new stack is not `stale` before its first runs could finish (a failure still tells)."""
    if current.state != STALE or current.last_success_at is not None:
        return current
    if previous is not None and previous.state != FRESH:
        return current
    first_seen = previous.since if previous is not None else now
    if (now - first_seen).total_seconds() <= current.objective_seconds:
        return replace(current, state=FRESH)
    return current


def evaluate(session: Session, settings: Settings, now: datetime) -> list[int]:
    """Compare every enabled source's state with the one last notified; record a pending
    notification per configured target for each event; return their ids (send after commit).
    """
    # Serializes evaluations (a run's end and beat's tick may race): one decision per change.
    lock_for_transaction(session, NOTIFY_LOCK)
    states = source_states(session, settings, now)
    kept = {row.source: row for row in session.scalars(
        select(AlertState).where(AlertState.source.in_(list(states))))}
    targets = list(configured_targets(settings))
    created: list[Notification] = []
    for name, current in states.items():
        previous = kept.get(name)
        current = _with_grace(current, previous, now)
        decision = decide(previous, current, now, settings.notify_reminder_seconds,
                          settings.notify_escalate_after)
        if previous is None:
            previous = AlertState(source=name, state=current.state, since=now,
                                  escalated=False, consecutive_failures=0)
            session.add(previous)
        if decision.state_changed:
            previous.state, previous.since = current.state, now
        previous.escalated = decision.escalated
        previous.consecutive_failures = current.consecutive_failures
        previous.updated_at = now
        if decision.event is None:
            continue
        previous.last_notified_at = now
        for target in targets:
            created.append(Notification(
                source=name, event=decision.event, state=current.state,
                severity=decision.severity, target=target, status="pending",
                run_id=current.last_run_id, job_id=current.last_job_id,
                consecutive_failures=current.consecutive_failures, detail=_detail(current),
                attempts=0, created_at=now))
    session.add_all(created)
    session.flush()
    return [n.id for n in created]
