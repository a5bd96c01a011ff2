"""The read cache's entries in Redis, shared by every replica: each group's generation, the entries, and a short lock
per key so that replicas missing the same key make one Moodle call; with near copies of the entries in the process,
so that a hit asks Redis for its group's generation alone (which a request has mostly read already, see
:func:`~lms_api.redisstate.request_snapshot`), never for the answer."""

from __future__ import annotations

import math
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import cast

import redis

from lms_api.cache.entry import Entry, Generation
from lms_api.cache.localstore import Entries, LocalStore
from lms_api.redisstate import RedisLink, request_snapshot

KEY_PREFIX = "lms_api:cache:"
# Entries apart from the generations and locks, by the version of their format: replicas of a version that reads
# another format (a rolling deploy) keep their own entries, while every replica moves the same generations.
ENTRY_PREFIX = f"{KEY_PREFIX}v2:"
HEADER_MAX = "127"  # the last byte of an entry's header a script reads: generation, times and digest fit well within
ABSENT = 0  # the generation of a group without a key in Redis: none of its entries is kept near
# A group's generations in Redis, its first and each after a write, are drawn at random, never counted: a Redis that
# lost generations (restarted empty, or from an older snapshot; failed over to a replica behind) must not reach
# again, by counting on from where it went back to, a generation that copies kept near were stored under. Only
# equality is ever asked of them. Within a double's exact integers, as the scripts compare them in Lua.
_GENERATIONS = 2**48

# An entry is kept only while its group is still at the generation it was fetched under (ARGV[1]; 0: the group had no
# key), as in the process: a fetch that began before a write must not replace what a read after the write stored.
# The group moves to a new generation (ARGV[4]) first when it had no key, and when the entry replaces the key's entry
# of the same generation with other bytes (its digest, ARGV[6], against the one in the kept entry's header): other
# replicas' copies of that entry would be served, fresh, until their own time ran out, and a fetch that began before
# could be kept over it. The generation is kept ARGV[5] ms longer (0: until it is set again), as it is set or used.
# Answers the generation the entry is kept under (0: not kept). Generations are compared as Redis keeps them, the
# decimal digits of an integer, as ``redis-py`` sends them too.
_PUT_IF_CURRENT = """
local current = redis.call('GET', KEYS[1])
local generation = current
if not current then
    if ARGV[1] ~= '0' then return 0 end
    generation = ARGV[4]
elseif current ~= ARGV[1] then
    return 0
else
    local kept_generation, kept_digest = string.match(
        redis.call('GETRANGE', KEYS[2], 0, HEADER_MAX), '^(%d+) %S+ %S+ (%x+)\\n')
    if kept_generation == current and kept_digest ~= ARGV[6] then generation = ARGV[4] end
end
if generation ~= current then redis.call('SET', KEYS[1], generation) end
if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
redis.call('SET', KEYS[2], generation .. ARGV[2], 'PX', ARGV[3])
return tonumber(generation)
"""
# An answer fetched again with the bytes of the entry kept under the same generation: its times written over the
# kept ones, in place, rather than the answer sent again.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local kept_generation, kept_digest = string.match(
    redis.call('GETRANGE', KEYS[2], 0, HEADER_MAX), '^(%d+) %S+ %S+ (%x+)\\n')
if kept_generation ~= ARGV[1] or kept_digest ~= ARGV[2] then return 0 end
redis.call('SETRANGE', KEYS[2], string.len(kept_generation), ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return 1
"""
# Only the holder's token unlocks: a fetch that outlived its lock must not free a lock taken since.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class RedisStore:
    """Entries in Redis, shared by every replica, with copies near, in the process; this process's
    :class:`LocalStore` while Redis does not answer.

    A copy kept near is served while its group is at the generation it was stored under, as Redis says at the
    request's start, and while the entry is fresh; the same object each time, so what was parsed or dumped of it is
    reused. The copies have the fallback's budget of memory: only one of them holds entries at a time, as Redis going
    away or coming back begins an epoch (:class:`~lms_api.cache.entry.Generation`), emptying both. An answer kept
    over its key's entry with other bytes (a refresh, or a fetch once the entry expired) moves its group to a new
    generation, so that no replica serves its copy of the entry replaced, and a fetch that began before is not kept
    over it: every copy of the group misses once.

    Invalidations made while Redis was away are replayed on it when it answers again, so no replica reads an entry
    a write has made wrong. A request's snapshot of the generations read before a replay does not show it: the
    store's :meth:`stamp` moves once the replay has reached Redis (and at each epoch), and a snapshot stamped
    otherwise is not trusted.
    """

    name = "redis"

    def __init__(self, link: RedisLink, fallback: LocalStore, expiring_generations: Mapping[str, int]) -> None:
        """``expiring_generations``: for each group kept apart by a parameter (one part, and one generation, per user
        who reads: ``notifications/42``), the seconds each part's generation is kept after it is last set or used;
        longer than what is stored under it lives. Other groups' generations are kept until Redis forgets them."""
        self.link = link
        self._expiring_generations = expiring_generations
        self._fallback = fallback
        self._near = Entries(fallback.entries.max_bytes)
        self._clock = fallback.clock
        self._put_if_current = link.client.register_script(_PUT_IF_CURRENT.replace("HEADER_MAX", HEADER_MAX))
        self._renew = link.client.register_script(_RENEW.replace("HEADER_MAX", HEADER_MAX))
        self._release = link.client.register_script(_RELEASE)
        self._missed_invalidations: set[str] = set()
        self._lock = threading.Lock()
        # The scripts are run on ``link.client`` of the moment (tests swap it for one that fails).
        # Whether Redis is used, and the epoch: one tuple, read at once by threads that do not take the lock.
        self._mode = (True, fallback.begin_epoch())
        self._mode_lock = threading.Lock()
        self._stamp = 0
        self._stamp_lock = threading.Lock()

    def stamp(self) -> int:
        """Moved after each replay of missed invalidations has reached Redis, and at each epoch: a request's snapshot
        is trusted only while the stamp it was taken with, before its values were read, is the store's."""
        return self._stamp

    @staticmethod
    def generation_key(group: str) -> str:
        return f"{KEY_PREFIX}generation:{group}"

    def generation(self, group: str) -> Generation:
        on_redis, epoch = self._current_mode()
        if on_redis:
            try:
                return Generation(epoch, self._redis_generation(group))
            except redis.RedisError as error:
                epoch = self._failed(error)
        return self._fallback_generation(group, epoch)

    def get(self, group: str, key: str) -> tuple[Generation, Entry | None]:
        on_redis, epoch = self._current_mode()
        if not on_redis:
            return self._fallback_get(group, key, epoch)
        try:
            generation = Generation(epoch, self._redis_generation(group))
            near = self._near.get(key) if generation.value != ABSENT else None
            if near is not None and near.generation != generation:
                near = None
            if near is not None and self._clock() < near.fresh_until:
                return generation, near
            raw = self.link.client.get(ENTRY_PREFIX + key)
        except redis.RedisError as error:
            return self._fallback_get(group, key, self._failed(error))
        shared = Entry.decode(raw, epoch) if isinstance(raw, bytes) else None
        if shared is None or shared.generation != generation:
            return generation, near  # a stale copy, or none: for stale-if-error
        if generation.value != ABSENT:
            self._near.put(key, shared)
        return generation, shared

    def put(self, group: str, key: str, entry: Entry) -> None:
        on_redis, epoch = self._current_mode()
        if entry.generation.epoch != epoch:
            return  # fetched under the other counter: Redis went away or came back since
        if not on_redis:
            self._fallback.put(group, key, entry)
            return
        expires_ms = max(1, math.ceil((entry.stale_until - time.time()) * 1000))
        name = self.generation_key(group)
        try:
            renewed = self._renewed(group, key, entry, expires_ms)
            if renewed is not None:
                self._near.put(key, renewed)
                return
            stored = self._put_if_current(
                keys=[name, ENTRY_PREFIX + key],
                args=[
                    entry.generation.value,
                    entry.encode_after_generation(),
                    expires_ms,
                    _new_generation(),
                    self._generation_ttl_ms(group),
                    entry.digest,
                ],
                client=self.link.client,
            )
        except redis.RedisError as error:
            self._failed(error)
            return
        if not stored:
            return
        snapshot = request_snapshot()
        if stored != entry.generation.value and snapshot is not None:
            snapshot[name] = str(stored).encode()  # the group moved on: the request's own reads see it
        self._near.put(key, replace(entry, generation=Generation(epoch, stored)))

    def _renewed(self, group: str, key: str, entry: Entry, expires_ms: int) -> Entry | None:
        """This process's copy with ``entry``'s times, once the entry kept in Redis under the same generation and with
        the same bytes took them; tried only when the copy has those bytes (a forwarded answer that did not change),
        so that they are not sent again. The copy keeps its bytes object: what was parsed or dumped of it stays."""
        near = self._near.get(key)
        if near is None or near.generation != entry.generation or near.body != entry.body:
            return None
        renewed = self._renew(
            keys=[self.generation_key(group), ENTRY_PREFIX + key],
            args=[entry.generation.value, entry.digest, entry.times(), expires_ms, self._generation_ttl_ms(group)],
            client=self.link.client,
        )
        return replace(near, fresh_until=entry.fresh_until, stale_until=entry.stale_until) if renewed else None

    def invalidate(self, group: str) -> None:
        self._fallback.invalidate(group)
        snapshot = request_snapshot()
        name = self.generation_key(group)
        if self._current_mode()[0]:
            try:
                generation = self._bump(group)
            except redis.RedisError as error:
                self._failed(error)
            else:
                if snapshot is not None:  # the request's own reads after its write see the write
                    snapshot[name] = str(generation).encode()
                return
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
            self._release(keys=[_lock_key(key)], args=[token], client=self.link.client)
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

    def _redis_generation(self, group: str) -> int:
        """The group's generation in Redis as the request read it at its start, else as Redis says now."""
        name = self.generation_key(group)
        snapshot = request_snapshot()
        if snapshot is not None and snapshot.stamps.get(self) != self._stamp:
            snapshot = None  # read before a replay, or in another epoch: it may not show a write made here
        if snapshot is not None and name in snapshot:
            raw = snapshot[name]
        else:
            raw = cast("bytes | None", self.link.client.get(name))  # the client does not decode answers
            if snapshot is not None:
                snapshot[name] = raw
        return int(raw or ABSENT)

    def _current_mode(self) -> tuple[bool, int]:
        """Whether to use Redis now, and the epoch that began when that last changed (emptying the copies near and
        the fallback, as neither may be served under the other's counter)."""
        usable = self._usable()
        mode = self._mode
        if mode[0] == usable:
            return mode
        with self._mode_lock:
            if self._mode[0] != usable:
                self._near.clear()
                self._mode = (usable, self._fallback.begin_epoch())
                self._move_stamp()
            return self._mode

    def _bump(self, group: str) -> int:
        """Move the group to a new generation in Redis: the generation."""
        generation = _new_generation()
        self.link.client.set(self.generation_key(group), generation, px=self._generation_ttl_ms(group) or None)
        return generation

    def _generation_ttl_ms(self, group: str) -> int:
        """How long the generation of ``group`` is kept once set or used (a part of a group kept apart by a parameter is
        named ``group/value``); 0: until it is set again. Once gone, the group begins again at a new first one."""
        return 1000 * self._expiring_generations.get(group.partition("/")[0], 0)

    def _move_stamp(self) -> None:
        with self._stamp_lock:
            self._stamp += 1

    def _failed(self, error: redis.RedisError) -> int:
        """Note that Redis failed: the epoch of the fallback, begun now."""
        self.link.went_down(error)
        return self._current_mode()[1]

    def _fallback_generation(self, group: str, epoch: int) -> Generation:
        # Of the epoch the caller works in: when Redis came back meanwhile, an answer fetched under it is not kept.
        return Generation(epoch, self._fallback.generation(group).value)

    def _fallback_get(self, group: str, key: str, epoch: int) -> tuple[Generation, Entry | None]:
        generation, entry = self._fallback.get(group, key)
        if generation.epoch != epoch:
            return Generation(epoch, generation.value), None
        return generation, entry

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
                    self._bump(group)
                if not missed:
                    self.link.client.ping()  # nothing to replay: Redis must still answer before it is used again
            except redis.RedisError as error:
                self.link.went_down(error)
                return False
            if missed:
                self._move_stamp()  # after the replay reached Redis: a snapshot stamped since shows it
            self._missed_invalidations.clear()
        self.link.answered()
        return True


def _new_generation() -> int:
    return 2 + secrets.randbelow(_GENERATIONS)


def _lock_key(key: str) -> str:
    return f"{KEY_PREFIX}lock:{key}"
