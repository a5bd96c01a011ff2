"""The read cache: Moodle's answers to read functions, kept per group for ``CACHE_TTLS``, shared by replicas in Redis.

The key is the function and its encoded parameters (so a user's notifications are that user's entry), never the
caller's token; authorisation has run before a view asks. Concurrent identical misses make one Moodle call: in one
process the others wait for its answer; across replicas a short lock in Redis does the same. A transport failure
(timeout, refused, reset, HTTP 502/503/504, breaker open, bulkhead full) serves an entry up to ``CACHE_STALE_S``
past its expiry; Moodle's own error answers pass through and nothing failed is kept. ``Cache-Control: no-cache``
forwards a read to Moodle only for a token with the ``cache:refresh`` scope; anyone else is answered from the cache.

Each group has a generation. A write that may have changed a group bumps it (in Redis, so every replica sees it
before the write's answer is sent); entries of an older generation are never served, and an answer fetched before
the bump is never stored after it.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum
from typing import Any, TypeVar

import redis
import structlog
from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid.tweens import EXCVIEW

from lms_api.calllog import current_call_log
from lms_api.errors import ErrorCode
from lms_api.jsoncodec import loads
from lms_api.moodle.client import Answer, MoodleClient
from lms_api.moodle.encoding import encode_params
from lms_api.moodle.errors import MoodleError
from lms_api.moodle.functions import CACHED_FUNCTIONS, INVALIDATED_BY, SITE_INFO
from lms_api.redisstate import RedisLink, redis_client
from lms_api.security import Scope
from lms_api.settings import Settings

log = structlog.get_logger("lms_api.cache")

Derived = TypeVar("Derived")

CACHE_NAME = "lms_api"
KEY_PREFIX = "lms_api:cache:"
# What stale-if-error covers: Moodle could not be reached or did not answer, as opposed to an answer of its own.
TRANSPORT_FAILURES = frozenset(
    {ErrorCode.MOODLE_TIMEOUT, ErrorCode.MOODLE_UNAVAILABLE, ErrorCode.BAD_GATEWAY, ErrorCode.MOODLE_BUSY}
)
LOCK_POLL_S = 0.02
NO_CACHE_IGNORED = "no-cache-ignored"  # Cache-Status detail: no-cache without the scope cache:refresh
MAX_DERIVED = 64  # answers worked out from entries and remembered (the site info rendered for its route)
ENTRY_OVERHEAD_BYTES = 200  # the key, the entry object and the LRU's bookkeeping, roughly


@dataclass(frozen=True)
class Entry:
    generation: int
    body: bytes  # Moodle's answer as JSON
    fresh_until: float  # wall-clock seconds, comparable across replicas
    stale_until: float

    def encode(self) -> bytes:
        return f"{self.generation} {self.fresh_until} {self.stale_until}\n".encode() + self.body

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        header, _, body = raw.partition(b"\n")
        generation, fresh_until, stale_until = header.split()
        return cls(int(generation), body, float(fresh_until), float(stale_until))


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

    @property
    def size_bytes(self) -> int:
        return self._bytes

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
        size = len(entry.body) + len(key) + ENTRY_OVERHEAD_BYTES
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
            self._bytes -= len(entry.body) + len(key) + ENTRY_OVERHEAD_BYTES


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
        return self.get(group, "")[0]

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


class Fetch(IntEnum):
    """How an answer was got, least cached last: the answer of a request is its least cached call's."""

    HIT = 0
    COLLAPSED = 1
    MISS = 2
    REFRESH = 3
    STALE = 4


@dataclass(frozen=True)
class CacheOutcome:
    fetch: Fetch
    ttl_s: int = 0  # seconds left (negative: past expiry) for hits and stale answers
    stored: bool = False
    group: str = field(default="", compare=False)  # for metrics

    def header(self, no_cache_ignored: bool = False) -> str:
        """The ``Cache-Status`` member for this answer (RFC 9211); ``no_cache_ignored``: the request asked for a
        fresh answer, which its token may not have, and a hit says so."""
        if self.fetch == Fetch.HIT:
            return f"{CACHE_NAME}; hit; ttl={self.ttl_s}" + (f"; detail={NO_CACHE_IGNORED}" if no_cache_ignored else "")
        if self.fetch == Fetch.STALE:
            return f"{CACHE_NAME}; hit; ttl={self.ttl_s}; detail=stale-if-error"
        if self.fetch == Fetch.COLLAPSED:
            return f"{CACHE_NAME}; fwd=uri-miss; collapsed"
        forwarded = "request" if self.fetch == Fetch.REFRESH else "uri-miss"
        return f"{CACHE_NAME}; fwd={forwarded}" + ("; stored" if self.stored else "")


def request_outcome(outcomes: list[CacheOutcome]) -> CacheOutcome | None:
    """One outcome for a request of several cached calls: the least cached, with the least time left."""
    if not outcomes:
        return None
    worst = max(outcome.fetch for outcome in outcomes)
    same = [outcome for outcome in outcomes if outcome.fetch == worst]
    return CacheOutcome(worst, min(outcome.ttl_s for outcome in same), all(outcome.stored for outcome in same))


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.body: bytes | None = None
        self.error: BaseException | None = None


class ReadCache:
    """The cache of one process: its store, its groups' TTLs, and the fetches in flight."""

    def __init__(
        self,
        store: LocalStore | RedisStore,
        ttls: Mapping[str, int],
        stale_s: int,
        wait_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._ttls = ttls
        self._stale_s = stale_s
        self._wait_s = wait_s
        self._clock = clock
        # By key and generation: a read that starts after a write never waits for a fetch that started before it.
        self._flights: dict[tuple[str, int], _Flight] = {}
        self._flights_lock = threading.Lock()
        self._derived: OrderedDict[tuple[str, int, float, Callable[[Any], Any]], Any] = OrderedDict()
        self._derived_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ReadCache:
        local = LocalStore(settings.cache_max_mb * 1024 * 1024)
        store: LocalStore | RedisStore = local
        if settings.redis_url:
            note = "cache entries are kept per process until Redis answers again"
            store = RedisStore(RedisLink(redis_client(settings.redis_url), "cache", note), local)
        return cls(store, settings.cache_ttls, settings.cache_stale_s, settings.moodle_timeout_ms / 1000)

    def caches(self, function: str) -> bool:
        return self._ttls.get(CACHED_FUNCTIONS.get(function, ""), 0) > 0

    def read(
        self,
        function: str,
        params: Mapping[str, Any],
        fetch: Callable[[], Answer],
        refresh: bool = False,
        derive: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Moodle's answer to ``function(params)``, from the cache when fresh; ``refresh`` forwards regardless.

        A forwarded answer is parsed once (by the client) and kept as the bytes Moodle sent. With ``derive``, the
        answer is ``derive(answer)``, remembered per stored version of a fresh entry.
        """
        group = CACHED_FUNCTIONS[function]
        key = _key(group, function, params)
        generation, entry = self.store.get(group, key)
        now = self._clock()
        if entry is not None and not refresh and now < entry.fresh_until:
            _note(group, CacheOutcome(Fetch.HIT, math.ceil(entry.fresh_until - now)))
            if derive is None:
                return loads(entry.body)
            return self._derived_from(key, entry, derive)
        value = self._read_through(function, group, key, generation, entry, now, fetch, refresh)
        return value if derive is None else derive(value)

    def _derived_from(self, key: str, entry: Entry, derive: Callable[[Any], Any]) -> Any:
        version = (key, entry.generation, entry.fresh_until, derive)
        with self._derived_lock:
            if version in self._derived:
                self._derived.move_to_end(version)
                return self._derived[version]
        derived = derive(loads(entry.body))
        with self._derived_lock:
            self._derived[version] = derived
            if len(self._derived) > MAX_DERIVED:
                self._derived.popitem(last=False)
        return derived

    def _read_through(
        self,
        function: str,
        group: str,
        key: str,
        generation: int,
        entry: Entry | None,
        now: float,
        fetch: Callable[[], Answer],
        refresh: bool,
    ) -> Any:
        """No fresh entry (or a refresh): fetch it, or serve the entry stale if Moodle cannot be reached."""
        try:
            if refresh:  # asked to go to Moodle: never served by a fetch that started before this request
                value, collapsed = self._fetch_and_put(group, key, generation, fetch, share=False)
            else:
                value, collapsed = self._fetch_once(group, key, generation, fetch)
        except MoodleError as error:
            if error.code in TRANSPORT_FAILURES and entry is not None and now <= entry.stale_until:
                # Seconds left, or past expiry (negative); a fresh entry is served this way only to a refresh.
                left = entry.fresh_until - now
                ttl = math.ceil(left) if left > 0 else min(-1, math.floor(left))
                _note(group, CacheOutcome(Fetch.STALE, ttl))
                log.info("cache.stale_served", function=function, error_code=str(error.code))
                return loads(entry.body)
            _note(group, CacheOutcome(Fetch.REFRESH if refresh else Fetch.MISS))  # errors are never kept
            raise
        forwarded = Fetch.REFRESH if refresh else Fetch.MISS
        _note(group, CacheOutcome(Fetch.COLLAPSED) if collapsed else CacheOutcome(forwarded, stored=True))
        return value

    def store_answer(self, function: str, params: Mapping[str, Any], answer: Answer) -> None:
        """Keep an answer fetched outside a request (the site info refreshed in the background)."""
        if not self.caches(function):
            return
        group = CACHED_FUNCTIONS[function]
        self._put(group, _key(group, function, params), self.store.generation(group), answer.body)

    def invalidate_after(self, function: str) -> None:
        """A write of ``function`` may have reached Moodle: drop what it may have changed, here and everywhere."""
        for group in INVALIDATED_BY.get(function, ()):
            self.store.invalidate(group)
            log.info("cache.invalidated", group=group, function=function)

    def _fetch_once(self, group: str, key: str, generation: int, fetch: Callable[[], Answer]) -> tuple[Any, bool]:
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
                assert flight.body is not None
                return loads(flight.body), True
            return self._fetch_and_put(group, key, generation, fetch, share=False)
        try:
            value, collapsed = self._fetch_and_put(group, key, generation, fetch, share=True, flight=flight)
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
        group: str,
        key: str,
        generation: int,
        fetch: Callable[[], Answer],
        share: bool,
        flight: _Flight | None = None,
    ) -> tuple[Any, bool]:
        """Fetch and keep the answer under the key's lock in Redis; with ``share``, when another replica holds the
        lock, its answer instead (``True``: another replica's). ``flight`` gets the bytes for this process's
        waiters."""
        shared_store = self.store if isinstance(self.store, RedisStore) else None  # replicas share a key's lock
        # One lock per generation, as for fetches in flight: a read after a write never waits for an older fetch.
        lock_name = f"{key}@{generation}"
        token = shared_store.lock(lock_name, self._wait_s) if shared_store else None
        if shared_store and token is None and share:
            shared = self._wait_for_other_replica(shared_store, group, key, lock_name)
            if shared is not None:
                if flight is not None:
                    flight.body = shared
                return loads(shared), True
            token = shared_store.lock(lock_name, self._wait_s)  # its holder failed or gave up: fetch here
        try:
            answer = fetch()
            self._put(group, key, generation, answer.body)  # before the lock is let go: a waiting replica finds it
        finally:
            if shared_store and token is not None:
                shared_store.unlock(lock_name, token)
        if flight is not None:
            flight.body = answer.body
        return answer.value, False

    def _put(self, group: str, key: str, generation: int, body: bytes) -> None:
        now = self._clock()
        fresh_until = now + self._ttls[group]
        self.store.put(group, key, Entry(generation, body, fresh_until, fresh_until + self._stale_s))

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


def _key(group: str, function: str, params: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(encode_params(params)).encode()).hexdigest()
    return f"{group}:{function}:{digest}"


def _note(group: str, outcome: CacheOutcome) -> None:
    current_call_log().cache.append(replace(outcome, group=group))


class CachedMoodle:
    """The Moodle client as read routes see it: answers to cached functions come through the read cache."""

    def __init__(self, client: MoodleClient, cache: ReadCache, refresh: bool) -> None:
        self._client = client
        self._cache = cache
        self._refresh = refresh

    @property
    def max_input_vars(self) -> int:
        return self._client.max_input_vars

    def call(self, function: str, params: Mapping[str, Any] | None = None) -> Any:
        self._client.require(function)
        if not self._cache.caches(function):
            return self._client.call(function, params)
        return self._cache.read(function, params or {}, lambda: self._client.answer(function, params), self._refresh)

    def derived_site_info(self, derive: Callable[[dict[str, Any]], Derived]) -> Derived:
        """``derive(site info)``; from a cached entry, worked out once per stored version and then remembered.

        Every page load of an SPA asks for the site info, a 50 KB answer on a real site: served from the cache, it
        is then neither parsed nor dumped again. ``derive`` must not change its argument and its result must not
        be changed either: both are shared.
        """
        if not self._cache.caches(SITE_INFO):
            return derive(self._client.site_info())
        derived: Derived = self._cache.read(SITE_INFO, {}, self._client.site_info_answer, self._refresh, derive)
        return derived

    def require(self, *functions: str) -> None:
        self._client.require(*functions)

    def clean(self, text: str) -> str:
        return self._client.clean(text)


class FreshAnswer(Enum):
    """Whether a request asked for a fresh answer (``Cache-Control: no-cache``, ``max-age=0``, ``Pragma: no-cache``),
    and whether its token may have one."""

    NOT_ASKED = "not asked"
    HONOURED = "honoured"
    IGNORED = "ignored"


def fresh_answer(request: Request) -> FreshAnswer:
    directives = {part.strip().lower() for part in request.headers.get("Cache-Control", "").split(",")}
    pragma = request.headers.get("Pragma", "").strip().lower()  # HTTP/1.0 clients
    if not ("no-cache" in directives or "max-age=0" in directives or pragma == "no-cache"):
        return FreshAnswer.NOT_ASKED
    # Any caller could otherwise turn each request, counted once by the rate limit, into a Moodle call.
    return FreshAnswer.HONOURED if request.has_permission(Scope.CACHE_REFRESH) else FreshAnswer.IGNORED


def cache_tween_factory(handler: Callable[[Request], Response], registry: Registry) -> Callable[[Request], Response]:
    """After the view, error or not: drop what the request's writes may have changed, before the answer leaves;
    then ``Cache-Status`` on every answer a cached call took part in."""

    def tween(request: Request) -> Response:
        response = handler(request)
        calls = current_call_log()
        for call in calls.calls:
            if call.sent and call.function in INVALIDATED_BY:
                request.find_service(ReadCache).invalidate_after(call.function)
        outcome = request_outcome(calls.cache)
        if outcome is not None:
            response.headers["Cache-Status"] = outcome.header(request.fresh_answer is FreshAnswer.IGNORED)
        return response

    return tween


def includeme(config: Configurator) -> None:
    settings: Settings = config.registry.settings["lms_api.settings"]
    cache = ReadCache.from_settings(settings)
    config.include("lms_api.service_lookup")
    config.register_service(cache, ReadCache)

    def cached_moodle(context: Any, request: Request) -> CachedMoodle:
        refresh = request.fresh_answer is FreshAnswer.HONOURED
        return CachedMoodle(request.find_service(MoodleClient), cache, refresh)

    config.register_service_factory(cached_moodle, CachedMoodle)
    config.add_request_method(fresh_answer, "fresh_answer", reify=True)
    config.add_tween("lms_api.cache.cache_tween_factory", over=EXCVIEW, under="lms_api.logging.request_tween_factory")
