"""The read cache's entries in Redis, shared by every replica: each group's generation, the entries, and a short lock
per key so that replicas missing the same key make one Moodle call."""

from __future__ import annotations

import math
import threading
import time
import uuid

import redis

from lms_api.cache.entry import Entry
from lms_api.cache.localstore import LocalStore
from lms_api.redisstate import RedisLink

KEY_PREFIX = "lms_api:cache:"


class RedisStore:
    """Entries in Redis, shared by every replica; this process's :class:`LocalStore` while Redis does not answer.

    Invalidations made while Redis was away are replayed on it when it answers again, so no replica reads an entry
    a write has made wrong.
    """

    name = "redis"

    def __init__(self, link: RedisLink, fallback: LocalStore) -> None:
        self.link = link
        self._fallback = fallback
        # Only the holder's token unlocks: a fetch that outlived its lock must not free a lock taken since.
        self._release = link.client.register_script(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
        )
        # An entry is kept only while its group is still at the generation it was fetched under, as in the process:
        # a fetch that began before a write must not replace what a read after the write stored.
        self._put_if_current = link.client.register_script(
            "if (tonumber(redis.call('GET', KEYS[1])) or 0) == tonumber(ARGV[1]) then "
            "redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) return 1 end return 0"
        )
        self._missed_invalidations: set[str] = set()
        self._lock = threading.Lock()

    def generation(self, group: str) -> int:
        if not self._usable():
            return self._fallback.generation(group)
        try:
            generation = self.link.client.get(_generation_key(group))
        except redis.RedisError as error:
            self.link.went_down(error)
            return self._fallback.generation(group)
        return int(generation or 0)

    def get(self, group: str, key: str) -> tuple[int, Entry | None]:
        if not self._usable():
            return self._fallback.get(group, key)
        try:
            generation, raw = self.link.client.mget(_generation_key(group), KEY_PREFIX + key)
        except redis.RedisError as error:
            self.link.went_down(error)
            return self._fallback.get(group, key)
        current = int(generation or 0)
        entry = Entry.decode(raw) if isinstance(raw, bytes) else None
        return current, entry if entry is not None and entry.generation == current else None

    def put(self, group: str, key: str, entry: Entry) -> None:
        if not self._usable():
            self._fallback.put(group, key, entry)
            return
        expires_ms = max(1, math.ceil((entry.stale_until - time.time()) * 1000))
        try:
            self._put_if_current(
                keys=[_generation_key(group), KEY_PREFIX + key], args=[entry.generation, entry.encode(), expires_ms]
            )
        except redis.RedisError as error:
            self.link.went_down(error)

    def invalidate(self, group: str) -> None:
        self._fallback.invalidate(group)
        if self._usable():
            try:
                self.link.client.incr(_generation_key(group))
                return
            except redis.RedisError as error:
                self.link.went_down(error)
        with self._lock:
            self._missed_invalidations.add(group)

    def lock(self, key: str, ttl_s: float) -> str | None:
        """A short lock on ``key`` for one replica's fetch: its token, or None when another replica holds it."""
        if not self._usable():
            return uuid.uuid4().hex  # no Redis, no other replica to wait for
        token = uuid.uuid4().hex
        try:
            taken = self.link.client.set(_lock_key(key), token, nx=True, px=max(1, math.ceil(ttl_s * 1000)))
        except redis.RedisError as error:
            self.link.went_down(error)
            return token
        return token if taken else None

    def unlock(self, key: str, token: str) -> None:
        if not self._usable():
            return
        try:
            self._release(keys=[_lock_key(key)], args=[token])
        except redis.RedisError as error:
            self.link.went_down(error)

    def locked(self, key: str) -> bool:
        if not self._usable():
            return False
        try:
            return bool(self.link.client.exists(_lock_key(key)))
        except redis.RedisError as error:
            self.link.went_down(error)
            return False

    def _usable(self) -> bool:
        if not self.link.usable:
            return False
        if self.link.down or self._missed_invalidations:
            return self._replay_missed_invalidations()
        return True

    def _replay_missed_invalidations(self) -> bool:
        with self._lock:
            missed = sorted(self._missed_invalidations)
            try:
                for group in missed:
                    self.link.client.incr(_generation_key(group))
                if not missed:
                    self.link.client.ping()  # nothing to replay: Redis must still answer before it is used again
            except redis.RedisError as error:
                self.link.went_down(error)
                return False
            self._missed_invalidations.clear()
        if self.link.answered():
            # Writes made meanwhile through other replicas reached Redis alone: what was kept here may be wrong.
            self._fallback.clear()
        return True


def _generation_key(group: str) -> str:
    return f"{KEY_PREFIX}generation:{group}"


def _lock_key(key: str) -> str:
    return f"{KEY_PREFIX}lock:{key}"
