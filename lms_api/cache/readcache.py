"""The read cache of one process: a read is answered from its store while fresh; a miss is fetched once however many
readers want it at the same moment (in this process, and across replicas through a lock in Redis); a write's groups
are dropped by moving them to their next generation."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from lms_api.cache.entry import Entry, Generation
from lms_api.cache.localstore import LocalStore
from lms_api.cache.outcomes import CacheOutcome, Fetch, note
from lms_api.cache.parsed import PARSED_SHARE_OF_CACHE, ParsedAnswers
from lms_api.cache.redisstore import RedisStore
from lms_api.errors import ErrorCode
from lms_api.jsoncodec import loads
from lms_api.moodle.client import Answer
from lms_api.moodle.encoding import encode_params
from lms_api.moodle.errors import MoodleError
from lms_api.moodle.functions import PARTITIONED_GROUPS, CacheGroup, MoodleFunction
from lms_api.redisstate import RedisLink, redis_client
from lms_api.settings import Settings

log = structlog.get_logger("lms_api.cache")

# What stale-if-error covers: Moodle could not be reached or did not answer, as opposed to an answer of its own.
TRANSPORT_FAILURES = frozenset(
    {ErrorCode.MOODLE_TIMEOUT, ErrorCode.MOODLE_UNAVAILABLE, ErrorCode.BAD_GATEWAY, ErrorCode.MOODLE_BUSY}
)
LOCK_POLL_S = 0.02
GENERATION_OUTLIVES_ENTRIES_S = 60


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: Answer | None = None
        self.error: BaseException | None = None


class ReadCache:
    """The cache of one process: its store, its groups' TTLs, and the fetches in flight."""

    def __init__(
        self,
        store: LocalStore | RedisStore,
        ttls: Mapping[str, int],
        stale_s: int,
        wait_s: float,
        parsed_max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._ttls = ttls
        self._stale_s = stale_s
        self._wait_s = wait_s
        self._clock = clock
        # By key and generation: a read that starts after a write never waits for a fetch that started before it.
        self._flights: dict[tuple[str, Generation], _Flight] = {}
        self._flights_lock = threading.Lock()
        self._parsed = ParsedAnswers(parsed_max_bytes)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Callable[[], float] = time.time) -> ReadCache:
        """The cache ``settings`` describe; entries and shared reads' parsed answers share ``CACHE_MAX_MB``."""
        memory = settings.cache_max_mb * 1024 * 1024
        parsed_max_bytes = int(memory * PARSED_SHARE_OF_CACHE)
        local = LocalStore(memory - parsed_max_bytes, clock)
        store: LocalStore | RedisStore = local
        if settings.redis_url:
            note = "cache entries are kept per process until Redis answers again"
            link = RedisLink(redis_client(settings.redis_url), "cache", note)
            store = RedisStore(link, local, expiring_generations(settings.cache_ttls, settings.cache_stale_s))
        wait_s = settings.moodle_timeout_ms / 1000
        return cls(store, settings.cache_ttls, settings.cache_stale_s, wait_s, parsed_max_bytes, clock)

    def generations_read_along(self) -> list[str]:
        """The Redis keys of the generations every request may read at its start (see
        :class:`~lms_api.redisstate.ReadAlong`): the kept groups', but those kept apart by a parameter, which are many
        and each read by few requests."""
        if not isinstance(self.store, RedisStore):
            return []
        kept = (group for group, ttl in self._ttls.items() if ttl > 0 and group not in PARTITIONED_GROUPS)
        return [self.store.generation_key(group) for group in kept]

    def ttl_s(self, function: MoodleFunction) -> int:
        """How long ``function``'s answers are kept fresh: its group's time to live (0: not kept, or no group)."""
        group = function.cache_group
        return 0 if group is None else self._ttls.get(group, 0)

    def caches(self, function: MoodleFunction) -> bool:
        return self.ttl_s(function) > 0

    def read(
        self,
        function: MoodleFunction,
        params: Mapping[str, Any],
        fetch: Callable[[], Answer],
        refresh: bool = False,
    ) -> Any:
        """Moodle's answer to ``function(params)``, from the cache when fresh; ``refresh`` forwards regardless.

        A forwarded answer is parsed once (by the client) and kept as the bytes Moodle sent. An entry read again is
        parsed again, or, for a shared read (``function.shared``), is the object parsed from it before, shared by
        every reader (see :class:`ParsedAnswers`).
        """
        group = _scope(self._group(function), params)
        key = _key(group, function, params)
        generation, entry = self.store.get(group, key)
        now = self._clock()
        if entry is not None and not refresh and now < entry.fresh_until:
            note(CacheOutcome(Fetch.HIT, math.ceil(entry.fresh_until - now), group=self._group(function)))
            return self._parse(function, key, entry.body)
        return self._read_through(function, group, key, generation, entry, now, fetch, refresh)

    def fetch_and_store(
        self, function: MoodleFunction, params: Mapping[str, Any], fetch: Callable[[], Answer]
    ) -> Answer:
        """Fetch an answer outside a request (the site info refreshed in the background) and keep it, under the
        group's generation of before the fetch: a drop of the group while it was fetched leaves it unkept."""
        if not self.caches(function):
            return fetch()
        group = _scope(self._group(function), params)
        key = _key(group, function, params)
        generation = self.store.generation(group)
        answer = fetch()
        self._put(function, group, key, generation, answer)
        return answer

    def invalidate_after(self, function: MoodleFunction) -> None:
        """A write of ``function`` has ended and may have reached Moodle: drop what it may have changed, here and in
        every replica."""
        for group in function.drops:
            self.invalidate(group, cause=str(function))

    def invalidate(self, group: CacheGroup, partition: int | str | None = None, *, cause: str) -> None:
        """Drop ``group``'s entries here and in every replica; of a group kept apart by a parameter
        (:data:`~lms_api.moodle.functions.PARTITIONED_GROUPS`), the entries of that parameter's value ``partition``."""
        partitioned = group in PARTITIONED_GROUPS
        if partitioned != (partition is not None):
            raise ValueError(f"cache group {group} is {'' if partitioned else 'not '}kept apart by a parameter")
        scope = group if partition is None else f"{group}/{partition}"
        self.store.invalidate(scope)
        log.info("cache.invalidated", group=scope, cause=cause)

    def _group(self, function: MoodleFunction) -> CacheGroup:
        group = function.cache_group
        if group is None or self._ttls.get(group, 0) <= 0:
            raise ValueError(f"{function} is not kept by the read cache")
        return group

    def _read_through(
        self,
        function: MoodleFunction,
        group: str,
        key: str,
        generation: Generation,
        entry: Entry | None,
        now: float,
        fetch: Callable[[], Answer],
        refresh: bool,
    ) -> Any:
        """No fresh entry (or a refresh): fetch it, or serve the entry stale if Moodle cannot be reached."""
        try:
            if refresh:  # asked to go to Moodle: never served by a fetch that started before this request
                # Nor under the key's lock in Redis: two round trips more for each refresh, to spare a replica that
                # misses the same key at the same moment a Moodle call of its own.
                value, collapsed = self._fetch_and_put(function, group, key, generation, fetch, share=False, lock=False)
            else:
                value, collapsed = self._fetch_once(function, group, key, generation, fetch)
        except MoodleError as error:
            if error.code in TRANSPORT_FAILURES and entry is not None and now <= entry.stale_until:
                # Seconds left, or past expiry (negative); a fresh entry is served this way only to a refresh.
                left = entry.fresh_until - now
                ttl = math.ceil(left) if left > 0 else min(-1, math.floor(left))
                note(CacheOutcome(Fetch.STALE, ttl, group=self._group(function)))
                log.info("cache.stale_served", function=str(function), error_code=str(error.code))
                return self._parse(function, key, entry.body)
            note(CacheOutcome(Fetch.REFRESH if refresh else Fetch.MISS, group=self._group(function)))  # never kept
            raise
        forwarded = Fetch.REFRESH if refresh else Fetch.MISS
        base = self._group(function)
        note(
            CacheOutcome(Fetch.COLLAPSED, group=base) if collapsed else CacheOutcome(forwarded, stored=True, group=base)
        )
        return value

    def _fetch_once(
        self, function: MoodleFunction, group: str, key: str, generation: Generation, fetch: Callable[[], Answer]
    ) -> tuple[Any, bool]:
        """Fetch and keep the answer; concurrent callers for the same key wait for one fetch (``True``: waited)."""
        with self._flights_lock:
            flight = self._flights.get((key, generation))
            leader = flight is None
            if flight is None:
                flight = self._flights[key, generation] = _Flight()
        if not leader:
            if flight.done.wait(self._wait_s):
                if flight.error is not None:
                    raise flight.error
                assert flight.answer is not None
                return flight.answer.value, True
            return self._fetch_and_put(function, group, key, generation, fetch, share=False)
        try:
            value, collapsed = self._fetch_and_put(function, group, key, generation, fetch, share=True, flight=flight)
            return value, collapsed
        except BaseException as error:
            flight.error = error
            raise
        finally:
            flight.done.set()
            with self._flights_lock:
                self._flights.pop((key, generation), None)

    def _fetch_and_put(
        self,
        function: MoodleFunction,
        group: str,
        key: str,
        generation: Generation,
        fetch: Callable[[], Answer],
        share: bool,
        flight: _Flight | None = None,
        lock: bool = True,
    ) -> tuple[Any, bool]:
        """Fetch and keep the answer under the key's lock in Redis (unless not to ``lock``); with ``share``, when
        another replica holds the lock, its answer instead (``True``: another replica's). ``flight`` gets the answer
        for this process's waiters."""
        # Replicas share a key's lock.
        shared_store = self.store if lock and isinstance(self.store, RedisStore) else None
        # One lock per generation, as for fetches in flight: a read after a write never waits for an older fetch.
        lock_name = f"{key}@{generation.value}"
        token = shared_store.lock(lock_name, self._wait_s) if shared_store else None
        if shared_store and token is None and share:
            shared = self._wait_for_other_replica(shared_store, group, key, lock_name)
            if shared is not None:
                answer = Answer(self._parse(function, key, shared), shared)
                if flight is not None:
                    flight.answer = answer
                return answer.value, True
            token = shared_store.lock(lock_name, self._wait_s)  # its holder failed or gave up: fetch here
        try:
            answer = fetch()
            self._put(function, group, key, generation, answer)  # before the lock is let go: a waiting replica finds it
        finally:
            if shared_store and token is not None:
                shared_store.unlock(lock_name, token)
        if flight is not None:
            flight.answer = answer
        return answer.value, False

    def _put(self, function: MoodleFunction, group: str, key: str, generation: Generation, answer: Answer) -> None:
        now = self._clock()
        fresh_until = now + self.ttl_s(function)
        self.store.put(group, key, Entry(generation, answer.body, fresh_until, fresh_until + self._stale_s))
        if function.shared:
            self._parsed.remember(key, answer.body, answer.value)

    def _parse(self, function: MoodleFunction, key: str, body: bytes) -> Any:
        """An entry's answer: a shared read's as parsed before (once per stored answer), any other's parsed now."""
        return self._parsed.parsed(key, body) if function.shared else loads(body)

    def _wait_for_other_replica(self, store: RedisStore, group: str, key: str, lock_name: str) -> bytes | None:
        """While another replica holds the key's lock, wait (up to a call's deadline) for the entry it stores."""
        deadline = time.monotonic() + self._wait_s
        while True:
            held = store.locked(lock_name)
            _, entry = store.get(group, key)  # after the lock check: stored before the lock was let go
            if entry is not None and self._clock() < entry.fresh_until:
                return entry.body
            if not held or time.monotonic() >= deadline:
                return None
            time.sleep(LOCK_POLL_S)


def expiring_generations(ttls: Mapping[str, int], stale_s: int) -> dict[str, int]:
    """How long Redis keeps the generation of each part of a group kept apart by a parameter (one per user who reads
    their notifications) once it is set or used: longer than an entry stored under it lives, its group's TTL and
    ``stale_s``. A part not read for that long begins again, at a new first generation."""
    return {
        group: ttls[group] + stale_s + GENERATION_OUTLIVES_ENTRIES_S
        for group in PARTITIONED_GROUPS
        if ttls.get(group, 0) > 0
    }


def _scope(group: CacheGroup, params: Mapping[str, Any]) -> str:
    """Where an entry of ``group`` is kept: the group, or its part for one value of the parameter that keeps its
    entries apart (a user's notifications: ``notifications/42``)."""
    partition_by = PARTITIONED_GROUPS.get(group)
    return group if partition_by is None else f"{group}/{params.get(partition_by)}"


def _key(group: str, function: MoodleFunction, params: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(encode_params(params)).encode()).hexdigest()
    return f"{group}:{function}:{digest}"
