"""The per-process answer caches of GET /data: LRUs of one data version, bounded by real cost.

An entry is charged what it holds in memory, not just its answer's bytes: the key (the raw
query string, or the filter set), the value's objects and the LRU's own bookkeeping. Counting
answer bytes only, 20,000 distinct query strings were counted as 2.5 MB and took 86 MB
(issue 14); see tests/api/http/test_api_hardening_cache.py for the measurement.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from typing import Any, Hashable

# The LRU's own cost per entry, beyond the key and value objects: the OrderedDict slot and
# link node, and the (value, cost) tuple with its int (CPython 3.11, 64-bit; measured with
# tracemalloc: ~200-250 bytes, plus the dict table growing by doubling).
ENTRY_OVERHEAD = 300


def deep_size(obj: Any, _depth: int = 0) -> int:
    """Bytes held by `obj` and what it references: bytes/str/numbers, tuples, lists, dicts,
    dataclasses (shared singletons such as None, True and small ints count once, as 0)."""
    if obj is None or obj is True or obj is False or _depth > 8:
        return 0
    size = sys.getsizeof(obj)
    if isinstance(obj, (bytes, str, int, float, bytearray)):
        return size
    if isinstance(obj, (tuple, list, frozenset, set)):
        return size + sum(deep_size(item, _depth + 1) for item in obj)
    if isinstance(obj, dict):
        return size + sum(deep_size(k, _depth + 1) + deep_size(v, _depth + 1)
                          for k, v in obj.items())
    if dataclasses.is_dataclass(obj):
        holder = getattr(obj, "__dict__", None)
        if holder is not None:
            size += sys.getsizeof(holder)
        return size + sum(deep_size(getattr(obj, f.name), _depth + 1)
                          for f in dataclasses.fields(obj))
    return size


class VersionedCache:
    """A thread-safe LRU of values computed from one data version, bounded in bytes and entries.

    Every entry belongs to the version it was computed from; the first value stored for a
    newer version drops all older entries, which no request can want again. `put`'s `size` is
    the value's cost as the caller counts it; with `count_keys` the key's own size and
    ENTRY_OVERHEAD are added, so the bound is what the entries really take.
    """

    def __init__(self, max_bytes: int, max_entries: int | None = None,
                 count_keys: bool = False) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.count_keys = count_keys
        self._lock = threading.Lock()
        self._version: int | None = None
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    @property
    def cost(self) -> int:
        """Bytes charged for the entries held now."""
        return self._bytes

    def get(self, version: int | None, key: Hashable) -> Any:
        """The value stored for `key` at exactly this version, or None."""
        with self._lock:
            if version is None or version != self._version:
                return None
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, version: int, key: Hashable, value: Any, size: int) -> None:
        """Keep `value` (about `size` bytes) for `key` at `version`, evicting the least used."""
        if self.count_keys:
            size += deep_size(key) + ENTRY_OVERHEAD
        if size > self.max_bytes // 4:  # one huge page must not flush everything else
            return
        with self._lock:
            if version != self._version:
                self._entries.clear()
                self._bytes = 0
                self._version = version
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous[1]
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes or (
                    self.max_entries is not None and len(self._entries) > self.max_entries):
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def __len__(self) -> int:
        return len(self._entries)
