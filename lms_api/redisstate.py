"""State shared by replicas in one Redis, and what to do while it does not answer.

Rate limits and the read cache keep their state in Redis when ``REDIS_URL`` is set. When Redis fails they use
their in-process fallback for a few seconds, then try Redis again; the change is logged once each way.

A request's first round trip to Redis (the rate limit's) also reads the keys other concerns registered with
:class:`ReadAlong` (the read cache's generations); they find what it read in :func:`request_snapshot`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Generic, Protocol, TypeVar

import redis
import structlog
from pyramid.registry import Registry

log = structlog.get_logger("lms_api.redis")

RETRY_AFTER_S = 5.0
Kept = TypeVar("Kept")


def redis_client(url: str) -> redis.Redis:
    """Short timeouts: a request never waits long on a Redis that went away."""
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5, retry_on_timeout=False)


class RedisLink:
    """One Redis, and whether to use it now; ``purpose`` names the user in log lines (``ratelimit``, ``cache``)."""

    def __init__(
        self, client: redis.Redis, purpose: str, fallback_note: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self._purpose = purpose
        self._fallback_note = fallback_note
        self._clock = clock
        self._down_until: float | None = None
        self._lock = threading.Lock()

    @property
    def usable(self) -> bool:
        """False for a few seconds after a failure: the caller uses its in-process fallback meanwhile."""
        return self._down_until is None or self._clock() >= self._down_until

    @property
    def down(self) -> bool:
        return self._down_until is not None

    def went_down(self, error: Exception) -> None:
        with self._lock:
            if self._down_until is None:
                log.warning(f"{self._purpose}.redis_unavailable", error=type(error).__name__, note=self._fallback_note)
            self._down_until = self._clock() + RETRY_AFTER_S

    def answered(self) -> bool:
        """Note that Redis answered; True when it had been down until now."""
        if self._down_until is None:
            return False
        with self._lock:
            if self._down_until is None:
                return False
            self._down_until = None
        log.info(f"{self._purpose}.redis_restored")
        return True

    def answers(self) -> bool:
        """Ask Redis now (for readiness). A failure is noted; Redis coming back is left for the link's users to
        notice, since they act on it (the read cache drops what it kept in the process meanwhile)."""
        try:
            self.client.ping()
        except redis.RedisError as error:
            self.went_down(error)
            return False
        return True


class Stamped(Protocol):
    """A concern whose state in Redis may change in ways a snapshot read before cannot show (the read cache replaying
    invalidations Redis missed): its stamp moves after each such change has reached Redis."""

    def stamp(self) -> int: ...


class ReadAlong:
    """Redis keys that a request's concerns read at its start, in the round trip the request makes anyway: the rate
    limit's. Registered once, at configuration (the read cache names its groups' generations, and itself as
    :class:`Stamped`); the rate limit reads them with its count, and the values are the request's snapshot
    (:func:`request_snapshot`) while it is handled."""

    def __init__(self) -> None:
        self.keys: tuple[str, ...] = ()
        self._stamped: tuple[Stamped, ...] = ()

    def add(self, keys: Iterable[str], stamped: Stamped | None = None) -> None:
        self.keys = tuple(dict.fromkeys((*self.keys, *keys)))
        if stamped is not None:
            self._stamped = (*self._stamped, stamped)

    def stamps(self) -> dict[Stamped, int]:
        """Each stamped concern's stamp now: taken before the keys are read, so that a stamp moved since tells its
        concern that the values may predate a change it made."""
        return {stamped: stamped.stamp() for stamped in self._stamped}


def read_along(registry: Registry) -> ReadAlong:
    """The registry's keys read along: one object, however many concerns add theirs or read them."""
    kept: ReadAlong | None = getattr(registry, "redis_read_along", None)
    if kept is None:
        kept = registry.redis_read_along = ReadAlong()
    return kept


class Snapshot(dict[str, bytes | None]):
    """Redis keys -> their values (None: no such key) at the moment they were read, with the ``stamps`` of the
    concerns that read them, taken just before (see :meth:`ReadAlong.stamps`)."""

    def __init__(self, values: Iterable[tuple[str, bytes | None]], stamps: Mapping[Stamped, int]) -> None:
        super().__init__(values)
        self.stamps = dict(stamps)


_snapshot: ContextVar[Snapshot | None] = ContextVar("redis_snapshot", default=None)


@contextmanager
def taking_snapshot(values: Snapshot | None) -> Iterator[None]:
    """``values`` (read at the request's start) are the snapshot of the request handled in the block; None: it has
    none (the rate limit counted in the process), and each reader asks Redis itself."""
    if values is None:
        yield
        return
    reset_token = _snapshot.set(values)
    try:
        yield
    finally:
        _snapshot.reset(reset_token)


def no_request_snapshot() -> None:
    """The thread running this serves no request (a job's, a background refresher's): it has no snapshot, even where
    threads start with a copy of their starter's context, a request's."""
    _snapshot.set(None)


def request_snapshot() -> Snapshot | None:
    """The Redis values of the request being handled, as read at its start, and as its own reads and writes have
    changed them since (a key missing is unknown: ask Redis); None outside a request (a job, a background thread)."""
    return _snapshot.get()


def digest(text: str) -> str:
    """What is kept of a key that must not be kept as it is (a ticket, a delivery's fields): its SHA-256."""
    return hashlib.sha256(text.encode(errors="surrogatepass")).hexdigest()


class ExpiringKeys(Generic[Kept]):
    """The in-process stand-in for keys with an expiry in Redis: at most ``max_keys``, the oldest forgotten first,
    each until its time to live runs out."""

    def __init__(self, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_keys = max_keys
        self._clock = clock
        self._kept: OrderedDict[str, tuple[float, Kept]] = OrderedDict()  # key -> (forgotten at, value), oldest first
        self._lock = threading.Lock()

    def add(self, key: str, value: Kept, ttl_s: float) -> bool:
        """Keep ``value`` under ``key`` unless a live one is kept there (as Redis's ``SET NX``): whether it was."""
        now = self._clock()
        with self._lock:
            while self._kept:
                oldest, (forgotten_at, _) = next(iter(self._kept.items()))
                if forgotten_at > now and len(self._kept) < self._max_keys:
                    break
                del self._kept[oldest]
            if key in self._kept:
                return False
            self._kept[key] = (now + ttl_s, value)
            return True

    def pop(self, key: str) -> Kept | None:
        """The live value under ``key``, forgotten now (as Redis's ``GETDEL``)."""
        with self._lock:
            kept = self._kept.pop(key, None)
        if kept is None or kept[0] <= self._clock():
            return None
        return kept[1]

    def __len__(self) -> int:
        return len(self._kept)
