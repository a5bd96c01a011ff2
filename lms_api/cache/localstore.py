"""The read cache's entries in this process: the store without Redis, the fallback while Redis does not answer, and
the bounded set of entries both it and the near copies of Redis's entries are kept in."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from lms_api.cache.entry import Entry, Generation

ENTRY_OVERHEAD_BYTES = 200  # the key, the entry object and the LRU's bookkeeping, roughly


class Entries:
    """Entries by key, least recently used out first past ``max_bytes``; one that alone would pass it is not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: Entry) -> None:
        size = _size(key, entry)
        with self._lock:
            self._remove(key)  # first: an entry too big to keep still replaces the key's older one
            if size > self.max_bytes:
                return
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._remove(next(iter(self._entries)))

    def remove(self, key: str) -> None:
        with self._lock:
            self._remove(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= _size(key, entry)


class LocalStore:
    """Entries in this process, within ``max_bytes``, each served while its group is at the generation it was fetched
    under and its stale time is not past."""

    name = "memory"

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.entries = Entries(max_bytes)
        self._generations: dict[str, int] = {}
        self._epoch = 0
        self._lock = threading.Lock()

    def generation(self, group: str) -> Generation:
        with self._lock:
            return Generation(self._epoch, self._generations.get(group, 0))

    def get(self, group: str, key: str) -> tuple[Generation, Entry | None]:
        generation = self.generation(group)
        entry = self.entries.get(key)
        if entry is None:
            return generation, None
        if entry.generation != generation or entry.stale_until <= self.clock():
            self.entries.remove(key)
            return generation, None
        return generation, entry

    def put(self, group: str, key: str, entry: Entry) -> None:
        if entry.generation != self.generation(group):
            return  # the group was invalidated while this answer was fetched; or fetched in an earlier epoch
        self.entries.put(key, entry)

    def invalidate(self, group: str) -> None:
        with self._lock:
            self._generations[group] = self._generations.get(group, 0) + 1

    def begin_epoch(self) -> int:
        """Forget every entry, and refuse any answer fetched before now: the number of the epoch begun."""
        with self._lock:
            self._epoch += 1
            self.entries.clear()
            return self._epoch


def _size(key: str, entry: Entry) -> int:
    return len(entry.body) + len(key) + ENTRY_OVERHEAD_BYTES
