"""The ETL's beat schedule: ticks on epoch-aligned boundaries, the same for every beat."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from celery.beat import BeatLazyFunc

from shared.jobs.schedule import tick_time
from worker.beat_schedule import AlignedInterval, etl_entry

EPOCH_HOUR = datetime(2027, 1, 15, 8, 0, tzinfo=timezone.utc)  # a multiple of 300 s


def _at(seconds: float) -> datetime:
    return EPOCH_HOUR + timedelta(seconds=seconds)


def _schedule(now: datetime) -> AlignedInterval:
    return AlignedInterval(timedelta(seconds=300), nowfun=lambda: now)


def test_two_beats_started_apart_are_due_at_the_same_boundary() -> None:
    # Two beats that last ran 17 s and 240 s into one interval: neither is due before the
    # next boundary, both are once it has passed, and both then wait for the same one.
    for last in (_at(17), _at(240)):
        pending = _schedule(_at(299.9)).is_due(last)
        assert not pending.is_due and abs(pending.next - 0.1) < 1e-6
        due = _schedule(_at(300.2)).is_due(last)
        assert due.is_due and abs(due.next - 299.8) < 1e-6
    # Right after a send (last run = now) the next tick is the next boundary, not 300 s on.
    assert abs(_schedule(_at(300.2)).is_due(_at(300.2)).next - 299.8) < 1e-6
    assert _schedule(_at(300.2)).remaining_estimate(_at(17)) == timedelta(seconds=-0.2)


def test_the_tick_time_is_the_start_of_the_interval_holding_the_send() -> None:
    start = EPOCH_HOUR.timestamp()
    assert tick_time(300, now=start) == EPOCH_HOUR.isoformat()
    assert tick_time(300, now=start + 299.999) == EPOCH_HOUR.isoformat()
    assert tick_time(300, now=start + 300) == _at(300).isoformat()
    assert tick_time(2, now=start + 3.5) == _at(2).isoformat()


def test_the_etl_entry_names_its_tick_when_beat_sends_it() -> None:
    entry = etl_entry(2)
    lazy = entry["kwargs"]["scheduled_at"]
    assert isinstance(lazy, BeatLazyFunc)
    before = tick_time(2)
    sent = lazy()  # what beat calls as it sends the message
    assert sent in {before, tick_time(2)}
    assert entry["schedule"].run_every == timedelta(seconds=2)
