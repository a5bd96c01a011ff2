"""The read cache's entries in this process: the store without Redis, and the fallback while Redis does not answer."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from lms_api.cache.entry import Entry

ENTRY_OVERHEAD_BYTES = 200  # the key, the entry object and the LRU's bookkeeping, roughly


class LocalStore:
    """Entries in this process, least recently used out first past ``max_bytes``."""

    name = "memory"

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._generations: dict[str, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def generation(self, group: str) -> int:
        return self._generations.get(group, 0)

    def get(self, group: str, key: str) -> tuple[int, Entry | None]:
        with self._lock:
            generation = self._generations.get(group, 0)
            entry = self._entries.get(key)
            if entry is None:
                return generation, None
            if entry.generation != generation or entry.stale_until <= self._clock():
                self._remove(key)
                return generation, None
            self._entries.move_to_end(key)
            return generation, entry

    def put(self, group: str, key: str, entry: Entry) -> None:
        size = _size(key, entry)
        if size > self._max_bytes:
            return
        with self._lock:
            if entry.generation != self._generations.get(group, 0):
                return  # the group was invalidated while this answer was fetched
            self._remove(key)
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self._max_bytes:
                self._remove(next(iter(self._entries)))

    def invalidate(self, group: str) -> None:
        with self._lock:
            self._generations[group] = self._generations.get(group, 0) + 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= _size(key, entry)


def _size(key: str, entry: Entry) -> int:
    return len(entry.body) + len(key) + ENTRY_OVERHEAD_BYTES
