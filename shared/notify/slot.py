"""One notification send at a time, cluster-wide: a Redis lock the send task takes first."""
from __future__ import annotations

from typing import Any

import redis

from shared import redis_client
from shared.config import Settings

SLOT_KEY = "kasparro:notify:send-slot"


class SendSlot:
    """The one send slot; `acquire()` never waits, `release()` tolerates an expired lock.

    Sends share the worker pool with the runs. Holding one slot, a receiver that hangs holds
    at most one pool child (for its timeout), whatever the number of targets and messages:
    the other sends wait as delayed messages, which hold no child.
    """

    def __init__(self, settings: Settings, expire_seconds: float) -> None:
        self.client = redis_client.client(settings, socket_timeout=2, socket_connect_timeout=2)
        self.lock: Any = self.client.lock(settings.broker_key_prefix + SLOT_KEY,
                                          timeout=expire_seconds)

    def acquire(self) -> bool:
        """Take the slot if it is free (a crashed holder's lock expires by itself)."""
        return bool(self.lock.acquire(blocking=False))

    def release(self) -> None:
        """Give the slot back (already expired: nothing to do) and close the connection."""
        try:
            self.lock.release()
        except redis.exceptions.LockError:
            pass
        finally:
            self.client.close()
