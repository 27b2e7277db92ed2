"""The one notification send slot on real Redis: taken once, given back, expiring by itself."""
from __future__ import annotations

import time

from shared.config import Settings
from shared.notify.slot import SendSlot


def test_one_holder_at_a_time_and_an_expired_holder_frees_it(
        settings: Settings, clean_db: object) -> None:
    first, second = SendSlot(settings, 10), SendSlot(settings, 10)
    assert first.acquire()
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()
    crashed, waiting = SendSlot(settings, 0.3), SendSlot(settings, 10)
    assert crashed.acquire()  # and never released: its child died mid-send
    assert not waiting.acquire()
    time.sleep(0.4)
    assert waiting.acquire()
    waiting.release()
    crashed.release()  # long expired: nothing to give back, no error
